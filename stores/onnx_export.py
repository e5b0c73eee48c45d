"""Export a sentence-transformers model folder to ONNX (fp32 and int8), once. Needs torch: runs where ingest
runs (the worker image, a developer's install, `eventrag export-onnx`), never on the torch-free query path.

The graph is the transformer followed by the model's own pooling (mean or CLS, read from `1_Pooling`) and
L2 normalisation, so onnxruntime returns exactly what `SentenceTransformer.encode(normalize_embeddings=True)`
returns (cosine >= 0.999, `tests/test_onnx_embedding.py`). The legacy TorchScript exporter (`dynamo=False`)
needs no extra package; eager attention keeps the padding mask a real input of the graph. The int8 file
is onnxruntime's dynamic quantization of the MatMul weights, per channel: quantizing every op (embeddings
included) costs much more accuracy for little more speed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from stores.onnx_embedding import EXPORT_FORMAT, FP32_FILE, INT8_FILE, META_FILE, TOKENIZER_FILE, source_fingerprint


def _pooling_mode(model_dir: Path) -> str:
    modules = json.loads((model_dir / "modules.json").read_text()) if (model_dir / "modules.json").exists() else []
    types = [m.get("type", "") for m in modules]
    if types and not any(t.endswith("Normalize") for t in types):
        raise ValueError(f"{model_dir}: only models that L2-normalise their embeddings are supported")
    config_path = model_dir / "1_Pooling" / "config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {"pooling_mode_mean_tokens": True}
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    raise ValueError(f"{model_dir}: pooling {config} is not supported (mean or CLS only)")


def _window(model_dir: Path) -> int:
    config = model_dir / "sentence_bert_config.json"
    if config.exists():
        value = json.loads(config.read_text()).get("max_seq_length")
        if value:
            return int(value)
    return int(json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings", 512))


def export_onnx(model_location: str, out_dir: Path, *, model_id: str) -> Path:
    """Write `out_dir` (model.onnx, model-int8.onnx, tokenizer.json, metadata) atomically; returns it."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    source = Path(model_location)
    pooling = _pooling_mode(source)
    model = AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()

    class Pooled(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            # The token embeddings too: the worker pools its units' vectors from them (`stores.units`).
            return torch.nn.functional.normalize(pooled, p=2, dim=1), hidden

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        sample = torch.ones((2, 8), dtype=torch.long)
        dynamic: dict[str, dict[int, str]] = {
            name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask", "token_type_ids")
        }
        dynamic["embedding"] = {0: "batch"}
        dynamic["token_embeddings"] = {0: "batch", 1: "sequence"}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notes about shapes the dynamic axes cover
            torch.onnx.export(
                Pooled(model),
                (sample, sample, torch.zeros_like(sample)),
                str(tmp / FP32_FILE),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["embedding", "token_embeddings"],
                dynamic_axes=dynamic,
                opset_version=17,
                dynamo=False,
            )
        quantize_dynamic(
            str(tmp / FP32_FILE),
            str(tmp / INT8_FILE),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
        )
        shutil.copyfile(source / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        meta = {
            "model_id": model_id,
            "dimension": int(model.config.hidden_size),
            "max_tokens": _window(source),
            "pooling": pooling,
            "source": str(source),
            "source_fingerprint": source_fingerprint(str(source)),
            "format": EXPORT_FORMAT,
            "torch": torch.__version__,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir

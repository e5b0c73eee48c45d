"""Benchmark: editing one paragraph of a ~100-chunk document re-embeds about one chunk.

Runs the production worker path (webhook event -> worker -> embedding cache -> Qdrant local mode) with the
real all-MiniLM-L6-v2 model, three times on one document:

1. the first index (every chunk embedded),
2. an edit of one paragraph (cache on: only the changed chunk is embedded),
3. the same edit re-indexed with an empty cache (a full re-index), for the time ratio.

    python bench/incremental_reembed.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.container import build_container  # noqa: E402
from app.settings import Settings  # noqa: E402
from ingest.receiver import record_and_enqueue  # noqa: E402
from ingest.webhook_body import build_event, parse_webhook_body  # noqa: E402

PARAGRAPHS = 100


def paragraph(i: int, edited: bool = False) -> str:
    words = " ".join(f"term{i}x{j}" for j in range(25))
    lead = "This paragraph was rewritten completely." if edited else f"Paragraph {i} describes process step {i}."
    return f"## Step {i}\n{lead} It lists the following terms in order: {words}."


def document(edit: int | None = None) -> str:
    return "\n\n".join(paragraph(i, edited=(i == edit)) for i in range(PARAGRAPHS))


def apply(container, event_id: str, version: int, text: str) -> tuple[float, dict]:  # type: ignore[no-untyped-def]
    body = {
        "type": "file.updated",
        "timestamp": "2026-11-26T00:00:00Z",
        "data": {
            "file_id": "manual",
            "path": "manual.md",
            "version": version,
            "content": text,
            "content_type": "text/markdown",
        },
    }
    event = build_event(event_id, "bench", parse_webhook_body(json.dumps(body).encode()))
    record_and_enqueue(event, state=container.state, queue=container.queue)
    start = time.perf_counter()
    container.loop.drain()
    elapsed = time.perf_counter() - start
    doc = container.state.get_document("bench", "manual")
    return elapsed, {"chunks": doc.chunk_count, "embedded": doc.embedded, "reused": doc.reused}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        c = build_container(Settings(data_dir=Path(tmp) / "a", worker={"mass_delete_share": 1.0}))
        _ = c.embedder.dimension
        t_first, first = apply(c, "e1", 1, document())
        t_edit, edit = apply(c, "e2", 2, document(edit=PARAGRAPHS // 2))
        c.close()
        # A full re-index of the edited version: the same work with an empty cache.
        c2 = build_container(Settings(data_dir=Path(tmp) / "b", worker={"mass_delete_share": 1.0}), embedder=c.embedder)
        t_full, full = apply(c2, "e3", 2, document(edit=PARAGRAPHS // 2))
        c2.close()
    print(f"first index:        {first['chunks']} chunks, {first['embedded']} embedded, {t_first:.2f} s")
    print(f"one paragraph edit: {edit['embedded']} embedded, {edit['reused']} reused, {t_edit:.2f} s")
    print(f"full re-index:      {full['embedded']} embedded, {full['reused']} reused, {t_full:.2f} s")
    print(f"time ratio edit / full re-index: {t_edit / t_full:.3f} ({t_full / t_edit:.1f}x faster)")


if __name__ == "__main__":
    main()

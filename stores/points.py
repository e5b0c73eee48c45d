"""What every `VectorIndex` adapter stores, independent of the engine: point ids, payloads, hits.

The Qdrant Edge adapter (`stores.edge`) and the qdrant-client adapter (`stores.qdrant`) write the same
payload for the same chunk and read it back the same way, so the contract tests hold for both and an index
moved between them (re-sent files) answers identically. Nothing here imports an engine.
"""

from __future__ import annotations

import uuid
from typing import Any

from stores.ports import Hit, IndexPoint

DENSE = "dense"
SPARSE = "bm25"
SCHEMA_VERSION = 1
# Qdrant's own RRF constant (the server's and qdrant-client's default): docs/retrieval.md measured it.
RRF_K = 2
# Every prefetch of a hybrid query reads at least this deep, so fusion has enough candidates.
MIN_PREFETCH = 50
_POINT_NAMESPACE = uuid.UUID("6f1c7f53-3f43-4a8e-9a39-6f8d0a4b1e27")

# Payload fields with a keyword index (the workspace one is the tenant index) and the integer one.
KEYWORD_FIELDS = ("file_id", "revision", "path_dirs", "content_type", "path", "sheet")
INTEGER_FIELDS = ("version", "page_start", "page_end")


def point_id(workspace: str, file_id: str, revision: str, chunk_index: int) -> str:
    """Deterministic: re-running an event rewrites the same points instead of adding copies."""
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{workspace}\x1f{file_id}\x1f{revision}\x1f{chunk_index}"))


def path_dirs(path: str) -> list[str]:
    """Every folder prefix of a path ("a/b/c.md" -> ["a/", "a/b/"]): lets a keyword index answer prefixes."""
    parts = path.strip("/").split("/")[:-1]
    return ["/".join(parts[: i + 1]) + "/" for i in range(len(parts))]


def payload_of(p: IndexPoint) -> dict[str, Any]:
    return {
        "workspace": p.workspace,
        "file_id": p.file_id,
        "path": p.path,
        "path_dirs": path_dirs(p.path),
        "revision": p.revision,
        "version": p.version,
        "content_type": p.content_type,
        "chunk_index": p.chunk.index,
        "start": p.chunk.start,
        "end": p.chunk.end,
        "text": p.chunk.text,
        "heading": p.chunk.heading,
        "page_start": p.chunk.page_start,
        "page_end": p.chunk.page_end,
        "sheet": p.chunk.sheet,
        "title": p.title,
        "metadata": p.metadata,
    }


def hit_of(pid: str, score: float, pl: dict[str, Any]) -> Hit:
    return Hit(
        point_id=pid,
        score=float(score),
        workspace=pl["workspace"],
        file_id=pl["file_id"],
        path=pl["path"],
        revision=pl["revision"],
        version=pl.get("version"),
        chunk_index=int(pl["chunk_index"]),
        start=int(pl["start"]),
        end=int(pl["end"]),
        text=pl["text"],
        heading=pl.get("heading"),
        content_type=pl.get("content_type"),
        metadata=pl.get("metadata") or {},
        title=pl.get("title"),
        page_start=pl.get("page_start"),
        page_end=pl.get("page_end"),
        sheet=pl.get("sheet"),
    )


def model_mismatch_message(where: str, recorded: str, model_id: str) -> str:
    return (
        f"{where} was filled by embedding model {recorded!r}, but this process uses {model_id!r}: vectors of "
        f"two models (or of two backends of one model, such as fp32 and int8) are not comparable. Set "
        f"EVENTRAG_EMBEDDING_MODEL / EVENTRAG_EMBEDDING_BACKEND back to what filled it, or use a new "
        f"EVENTRAG_QDRANT_COLLECTION (and re-send your files)."
    )

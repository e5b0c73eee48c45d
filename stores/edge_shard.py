"""The files of an Edge index on disk, under the adapter (`stores.edge`) and its online optimize
(`stores.edge_rebuild`): the shard's configuration and payload indexes, opening a shard, the metadata file
that names the live generation, and the journal of writes an optimize replays.

    <index dir>/eventrag-index.json      the model, the dimension, which shard is live ("shard")
    <index dir>/edge_config.json, ...    the first shard, until an online optimize replaces it
    <index dir>/shards/gen-000001/       each later generation, one at a time (others are leftovers)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from stores.errors import StoreLockedError
from stores.points import DENSE, INTEGER_FIELDS, KEYWORD_FIELDS, SPARSE

META_FILE = "eventrag-index.json"
SHARD_CONFIG = "edge_config.json"  # Edge's own file: a directory holding it is a shard
GENERATIONS = "shards"  # the optimized generations, one directory each


def is_lock_error(exc: BaseException) -> bool:
    text = str(exc)
    return "WouldBlock" in text or "Resource temporarily unavailable" in text or "lock" in text.lower()


def shard_config(dimension: int) -> qe.EdgeConfig:
    """The shard every new index gets, and every optimized copy (`stores.edge_rebuild`): the named vectors
    of `stores.points`. (Its payload indexes, `create_payload_indexes`, are what makes a shard slow to
    open; vectors, the HNSW graph and the sparse index stay in RAM, where queries want them.)"""
    return qe.EdgeConfig(
        vectors={DENSE: qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)},
        sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
    )


def create_payload_indexes(shard: qe.EdgeShard) -> None:
    """The keyword indexes filters use (the workspace one is the tenant index) and the integer ones.

    Opening a shard holds the GIL (qdrant-edge-py 0.9), and the serving process opens each optimized copy
    (`stores.edge_rebuild`). With Qdrant's defaults an optimized segment's payload indexes are read into
    RAM at open (hash maps of every value: most of the 216 ms median to open 50,000 chunks here) and
    freed again at close; `Memory.Cold` maps them instead (106 ms, docs/performance.md). Integer fields are
    only ever filtered by range (`Conditions.equals` is the range [v, v]), so they get a range index
    without Qdrant's default lookup index beside it: three fewer indexes to open, flush and close in
    every segment. A shard made before keeps its indexes until its next online optimize rebuilds it."""
    cold = qe.Memory.Cold
    shard.update(qe.UpdateOperation.create_field_index("workspace", qe.KeywordIndexParams(is_tenant=True, memory=cold)))
    for name in KEYWORD_FIELDS:
        shard.update(qe.UpdateOperation.create_field_index(name, qe.KeywordIndexParams(memory=cold)))
    for name in INTEGER_FIELDS:
        shard.update(
            qe.UpdateOperation.create_field_index(name, qe.IntegerIndexParams(lookup=False, range=True, memory=cold))
        )


def load_shard(directory: Path) -> qe.EdgeShard:
    try:
        return qe.EdgeShard.load(str(directory))
    except Exception as exc:
        if is_lock_error(exc):
            raise StoreLockedError(f"the local index at {directory} is open in another process") from exc
        raise


def index_exists(path: Path) -> bool:
    """Whether an Edge index lives at `path` (in its first shard or in a generation the metadata names)."""
    return (active_dir(path, read_meta(path)) / SHARD_CONFIG).exists()


def read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / META_FILE
    return dict(json.loads(meta_path.read_text())) if meta_path.exists() else {}


def active_dir(path: Path, meta: dict[str, Any]) -> Path:
    return path / str(meta.get("shard", "."))


class Generation:
    """One open shard and the reads in flight on it: a generation replaced by an optimized one is closed
    once its last read ends."""

    __slots__ = ("directory", "readers", "shard")

    def __init__(self, shard: qe.EdgeShard, directory: Path) -> None:
        self.shard = shard
        self.directory = directory
        self.readers = 0


class Journal:
    """The writes applied to the live shard while an optimized copy is being built, in the order they
    were applied: replayed onto the copy before it takes over (`stores.edge_rebuild`)."""

    def __init__(self) -> None:
        self.ops: list[qe.UpdateOperation] = []
        self.points = 0

    def add(self, op: qe.UpdateOperation, points: int) -> None:
        self.ops.append(op)
        self.points += points


def write_meta(path: Path, **changes: Any) -> None:
    """Change fields of the metadata file atomically (write a copy, fsync, rename it over the old one)."""
    meta = {**read_meta(path), **changes}
    tmp = path / (META_FILE + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(meta, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path / META_FILE)


def remove_leftovers(path: Path, live: Path | None) -> None:
    """Remove what an interrupted or finished online optimize left in the index at `path`: generations
    other than the `live` one, and the first shard's files once a generation has replaced it. Safe only
    while this process holds the live shard (its WAL lock keeps every other process out)."""
    live = live.resolve() if live is not None else None
    generations = path / GENERATIONS
    if generations.is_dir():
        for entry in generations.iterdir():
            if entry.resolve() != live:
                shutil.rmtree(entry, ignore_errors=True)
    if live is not None and live != path.resolve():
        for entry in path.iterdir():
            if entry.name != GENERATIONS and not entry.name.startswith(META_FILE):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

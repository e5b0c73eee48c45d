"""Moving an embedded index from qdrant-client's local mode (the default before Qdrant Edge) to an Edge shard.

A data dir written by an earlier release holds its points in `<data dir>/qdrant/`; the document registry
next to it says they are indexed. Opening that data dir with the Edge default would show an empty index that
disagrees with the registry, so the first open copies every point (ids, both vectors and the payload) into
the new shard, checks the count, and renames the old folder to `qdrant.migrated-to-edge` (kept, not deleted:
removing it is the user's call). Nothing is re-embedded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from stores.edge import EdgeIndex, index_exists
from stores.points import DENSE, SPARSE

log = logging.getLogger(__name__)

MIGRATED_SUFFIX = ".migrated-to-edge"


def needs_migration(local_path: Path, edge_path: Path) -> bool:
    return (local_path / "collection").is_dir() and not index_exists(edge_path)


def migrate_local_to_edge(local_path: Path, collection: str, edge_path: Path) -> int:
    """Copy `collection` of the local-mode store at `local_path` into a new Edge shard at `edge_path`;
    returns the number of points moved. Leaves nothing half-made: a failure removes the new shard."""
    import shutil

    import qdrant_edge as qe

    from stores.qdrant import open_qdrant

    client = open_qdrant(url=None, api_key=None, path=str(local_path))  # StoreLockedError if held
    try:
        if not client.collection_exists(collection):
            return 0
        info = client.get_collection(collection)
        meta = info.config.metadata or {}
        vectors = info.config.params.vectors
        dimension = vectors[DENSE].size if isinstance(vectors, dict) and DENSE in vectors else None
        model_id = meta.get("embedding_model")
        if dimension is None or model_id is None:
            log.warning("%s: collection %r has no model record; not migrating it", local_path, collection)
            return 0
        index = EdgeIndex(edge_path)
        moved = 0
        try:
            index.ensure_ready(str(model_id), int(dimension))
            offset: Any = None
            while True:
                records, offset = client.scroll(
                    collection, limit=512, offset=offset, with_payload=True, with_vectors=True
                )
                points = []
                for r in records:
                    vec = r.vector if isinstance(r.vector, dict) else {}
                    vector: dict[str, Any] = {DENSE: list(vec[DENSE])}  # type: ignore[arg-type]
                    sparse = vec.get(SPARSE)
                    if sparse is not None and getattr(sparse, "indices", None):
                        vector[SPARSE] = qe.SparseVector(list(sparse.indices), list(sparse.values))  # type: ignore[union-attr]
                    points.append(qe.Point(str(r.id), vector, r.payload or {}))
                if points:
                    index.apply(qe.UpdateOperation.upsert_points(points), len(points))
                    moved += len(points)
                if offset is None:
                    break
            if index.points_count() != moved:
                raise RuntimeError(f"migration copied {moved} points but the new index holds {index.points_count()}")
        except BaseException:
            index.close()
            shutil.rmtree(edge_path, ignore_errors=True)
            raise
        index.close()
    finally:
        client.close()
    local_path.rename(local_path.with_name(local_path.name + MIGRATED_SUFFIX))
    log.warning(
        "moved %d point(s) from qdrant-client's local mode (%s) to Qdrant Edge (%s); the old folder is kept as %s",
        moved,
        local_path,
        edge_path,
        local_path.name + MIGRATED_SUFFIX,
    )
    return moved

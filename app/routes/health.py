"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from app.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "A dependency is not ready; `checks` says which"}},
)
def readyz(request: Request, response: Response) -> Health:
    """The state store and the index answer, and the embedding model is loaded."""
    container = getattr(request.app.state, "container", None)
    if container is None:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Health(status="starting", checks={"container": "not built yet"})
    checks: dict[str, str] = {}
    try:
        container.state.list_documents("__readyz__", limit=1)
        checks["state"] = "ok"
    except Exception as exc:
        checks["state"] = f"error: {exc}"
    try:
        container.index.revision_counts("__readyz__")
        checks["index"] = "ok"
    except Exception as exc:
        checks["index"] = f"error: {exc}"
    checks["embedding_model"] = container.embedder.model_id
    checks["queue_pending"] = str(container.queue.pending())
    ok = all(v == "ok" for k, v in checks.items() if k in ("state", "index"))
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="ok" if ok else "unavailable", checks=checks)

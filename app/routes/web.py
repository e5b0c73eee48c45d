"""The web page at `/` (static files from `app/web/static`) and `GET /me`, which tells the page who it is.

The page is plain HTML, CSS and JavaScript with no framework and no build step, so there is nothing to
install or compile, and it makes no request to another host: its Content-Security-Policy allows only this
origin, so the browser itself refuses anything else (fonts, CDNs, trackers).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app.deps import ContainerDep, Workspace
from app.schemas import ErrorBody, Me
from app.web import STATIC_DIR

router = APIRouter(tags=["web"])

PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
        " font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get(
    "/me", response_model=Me, responses={401: {"model": ErrorBody, "description": "Missing or unknown API key"}}
)
def me(workspace: Workspace, container: ContainerDep) -> Me:
    """The caller's workspace; `single_user` when the server runs on loopback without keys."""
    s = container.settings
    return Me(workspace=workspace, single_user=bool(s.anonymous_workspace) and not s.api_keys)


def mount_static(app: FastAPI) -> None:
    app.mount("/ui", StaticFiles(directory=STATIC_DIR), name="ui")

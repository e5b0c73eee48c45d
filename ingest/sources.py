"""Content sources: where the bytes of a changed file come from.

An event carries its content inline (`content`, `content_base64`), points at a URL (`ingest.sources_url`,
or `s3://` with `ingest.sources_s3`), or names a path under `EVENTRAG_SOURCE_ROOT`. `ContentRouter` picks
the source for each event.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ingest.errors import InvalidEventError, PathOutsideRootError, SourceNotFoundError, SourceUnavailableError
from stores.events import EventType, FileEvent
from stores.ports import ContentSource, FetchedFile

if TYPE_CHECKING:
    from ingest.sources_url import UrlSource


class InlineSource:
    def fetch(self, event: FileEvent) -> FetchedFile:
        data = event.inline_bytes()
        if data is None:
            raise SourceNotFoundError(f"event {event.event_id} carries no inline content")
        return FetchedFile(data)


class LocalFolderSource:
    """Reads `root/path`; a path that resolves outside the root (`..`, absolute, symlinks) is refused."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def resolve(self, path: str) -> Path:
        if Path(path).is_absolute() or path.startswith(("/", "\\")):
            raise PathOutsideRootError(f"path {path!r} is absolute; give a path relative to the source root")
        target = (self.root / path).resolve()
        if not target.is_relative_to(self.root):
            raise PathOutsideRootError(f"path {path!r} points outside the source root")
        return target

    def fetch(self, event: FileEvent) -> FetchedFile:
        target = self.resolve(event.path)
        try:
            return FetchedFile(target.read_bytes())
        except FileNotFoundError as exc:
            raise SourceNotFoundError(f"{event.path!r} does not exist under the source root") from exc
        except IsADirectoryError as exc:
            raise SourceNotFoundError(f"{event.path!r} is a directory, not a file") from exc
        except OSError as exc:
            raise SourceUnavailableError(f"cannot read {event.path!r}: {exc}") from exc


class ContentRouter:
    """Chooses the source for each event; `check` refuses at receive time what could never be fetched."""

    def __init__(
        self,
        *,
        folder: LocalFolderSource | None = None,
        url: UrlSource | None = None,
        extra: dict[str, ContentSource] | None = None,
        scheme_workspaces: dict[str, str] | None = None,
    ) -> None:
        self.inline = InlineSource()
        self.folder = folder
        self.url = url
        self.extra = extra or {}  # scheme -> source, e.g. {"s3": S3Source(...)}
        self.scheme_workspaces = scheme_workspaces or {}  # scheme -> the only workspace that may use it

    def _scheme(self, event: FileEvent) -> str | None:
        if event.url is None:
            return None
        return event.url.split("://", 1)[0].lower() if "://" in event.url else ""

    def check(self, event: FileEvent) -> None:
        if event.type is EventType.DELETED or event.inline_bytes() is not None:
            return
        scheme = self._scheme(event)
        if scheme is not None:
            if scheme in self.extra:
                owner = self.scheme_workspaces.get(scheme)
                if owner is not None and owner != event.workspace:
                    raise InvalidEventError(f"{scheme}:// content is reserved to workspace {owner!r}")
                return
            if scheme in ("http", "https"):
                if self.url is None:
                    raise InvalidEventError(
                        "fetching content from a URL is not enabled on this server; send the content inline"
                        " (content or content_base64), or have the operator list the URL's prefix in"
                        " EVENTRAG_FETCH__ALLOWED_URLS"
                    )
                self.url.check(event)
                return
            raise InvalidEventError(f"unsupported URL scheme {scheme!r} in data.url")
        if self.folder is None:
            raise InvalidEventError(
                "the event has no content, content_base64 or url, and no EVENTRAG_SOURCE_ROOT is configured"
                " to read data.path from"
            )
        try:
            self.folder.resolve(event.path)
        except PathOutsideRootError as exc:
            raise InvalidEventError(str(exc)) from exc

    def fetch(self, event: FileEvent) -> FetchedFile:
        if event.inline_bytes() is not None:
            return self.inline.fetch(event)
        scheme = self._scheme(event)
        if scheme is not None:
            source: ContentSource | None = self.extra.get(scheme) or (self.url if scheme in ("http", "https") else None)
            if source is None:
                raise SourceNotFoundError(f"no source configured for {event.url!r}")
            return source.fetch(event)
        if self.folder is None:
            raise SourceNotFoundError("no EVENTRAG_SOURCE_ROOT configured")
        return self.folder.fetch(event)

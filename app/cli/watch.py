"""`eventrag watch DIR`: a local folder as a file source that sends real webhooks.

Every create, change, move and delete under DIR becomes a signed Standard Webhooks delivery to the server,
exactly as a remote source would send it: a stable `file_id` per file (its path when first seen, kept
across renames), a `version` that only grows, a deterministic `webhook-id` per change, retries with
backoff on 5xx. `watchfiles` says *when* something changed; the watcher then compares the folder with its
manifest (path -> file id, version, size, mtime, hash), so a burst of editor saves, a folder renamed at
once or changes made while the watcher was not running all come down to the same few events, and the
index converges to the folder.

- *Versions* are microseconds since the epoch when the watcher saw the change, and at least one more than
  the file's last version: they grow even if the manifest is lost.
- *Renames*: a path that disappears while a new path appears with the same inode and content is a rename:
  one `file.updated` with the new path, the same file id (nothing is deleted and re-embedded).
- *Ignored*: hidden files and folders (a name starting with "."), editor and download temporaries (`~$x`,
  `x~`, `.#x`, `#x#`, `*.swp`, `*.tmp`, `*.part`, `*.crdownload`...), and `--ignore` globs.
- *Manifest*: `DATA_DIR/watch/<hash of folder, server, workspace>.json`, written atomically after every
  change sent. A change the server refused (a 4xx: a file over its body limit, say) is recorded with the
  reason and not resent until the file changes; one it could not take (down, 5xx) is retried.

`--by-path` sends no content: for a server whose EVENTRAG_SOURCE_ROOT is this folder (no size limit).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.common import DataDirOpt, ServerOpt, app, load_settings, server_up
from app.cli.delivery import Sender, error_detail, event_id_for, file_event_body

TEMPORARY = ("~$*", "*~", ".#*", "#*#", "*.swp", "*.swo", "*.swx", "*.tmp", "*.temp", "*.part", "*.crdownload",
             "*.download", "4913", "Thumbs.db", "desktop.ini")  # fmt: skip


@dataclass(slots=True)
class Entry:
    """What the server was last told about one path."""

    file_id: str
    version: int
    size: int
    mtime_ns: int
    sha256: str
    inode: int
    error: str | None = None  # the server refused this version (4xx): not resent until the file changes


@dataclass(slots=True)
class Seen:
    size: int
    mtime_ns: int
    inode: int


class Watcher:
    def __init__(
        self,
        folder: Path,
        sender: Sender,
        manifest_path: Path,
        *,
        workspace: str,
        by_path: bool = False,
        ignore: tuple[str, ...] = (),
        include_hidden: bool = False,
    ) -> None:
        self.folder = folder.resolve()
        self.sender = sender
        self.manifest_path = manifest_path
        self.workspace = workspace
        self.by_path = by_path
        self.patterns = (*TEMPORARY, *ignore)
        self.include_hidden = include_hidden
        self.files: dict[str, Entry] = {}
        self.versions: dict[str, int] = {}  # file id -> last version sent, deletes included
        self.unsent = False  # the server could not be reached for some change: sync again without an event
        self._load()

    # --- the manifest ------------------------------------------------------------------------------------
    def _load(self) -> None:
        if not self.manifest_path.exists():
            return
        saved = json.loads(self.manifest_path.read_text())
        self.files = {path: Entry(**entry) for path, entry in saved.get("files", {}).items()}
        self.versions = {k: int(v) for k, v in saved.get("versions", {}).items()}

    def _save(self) -> None:
        self.manifest_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.manifest_path.with_suffix(".tmp")
        payload = {
            "folder": str(self.folder),
            "workspace": self.workspace,
            "files": {path: asdict(entry) for path, entry in sorted(self.files.items())},
            "versions": self.versions,
        }
        temporary.write_text(json.dumps(payload, indent=1))
        os.replace(temporary, self.manifest_path)

    # --- what is in the folder ---------------------------------------------------------------------------
    def ignored(self, relative: str) -> bool:
        parts = relative.split("/")
        if not self.include_hidden and any(p.startswith(".") for p in parts):
            return True
        return any(
            fnmatch.fnmatch(parts[-1], pattern) or fnmatch.fnmatch(relative, pattern) for pattern in self.patterns
        )

    def scan(self) -> dict[str, Seen]:
        found: dict[str, Seen] = {}
        for directory, subdirs, names in os.walk(self.folder):
            base = Path(directory)
            rel_dir = base.relative_to(self.folder).as_posix()
            subdirs[:] = [d for d in subdirs if not self.ignored(d if rel_dir == "." else f"{rel_dir}/{d}")]
            for name in names:
                relative = name if rel_dir == "." else f"{rel_dir}/{name}"
                if self.ignored(relative):
                    continue
                try:
                    st = (base / name).stat()
                except OSError:  # gone between listing and stat: the next scan sees it deleted
                    continue
                if not os.path.isfile(base / name):
                    continue
                found[relative] = Seen(st.st_size, st.st_mtime_ns, st.st_ino)
        return found

    def _read(self, relative: str) -> tuple[bytes, str] | None:
        try:
            data = (self.folder / relative).read_bytes()
        except OSError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    # --- sync --------------------------------------------------------------------------------------------
    def sync(self) -> int:
        """Send what differs between the folder and the manifest; returns how many changes were sent."""
        now = self.scan()
        self.unsent = False
        sent = 0
        changed: dict[str, tuple[Seen, bytes, str]] = {}
        for relative, seen in now.items():
            entry = self.files.get(relative)
            if entry is not None and (entry.size, entry.mtime_ns, entry.inode) == (
                seen.size,
                seen.mtime_ns,
                seen.inode,
            ):
                continue
            read = self._read(relative)
            if read is None:
                continue
            data, digest = read
            if entry is not None and entry.sha256 == digest:
                entry.size, entry.mtime_ns, entry.inode = seen.size, seen.mtime_ns, seen.inode  # touched only
                continue
            changed[relative] = (seen, data, digest)
        gone = [relative for relative in self.files if relative not in now]
        # Renames: a path gone and a new one with the same inode and content, in the same scan.
        for old in gone:
            entry = self.files[old]
            match = next(
                (
                    new
                    for new, (seen, _, digest) in changed.items()
                    if new not in self.files and seen.inode == entry.inode and digest == entry.sha256
                ),
                None,
            )
            if match is not None:
                seen, data, digest = changed.pop(match)
                if self._send("updated", match, entry.file_id, data, seen, digest, renamed_from=old):
                    del self.files[old]
                    sent += 1
            elif self._delete(old, entry):
                sent += 1
        for relative, (seen, data, digest) in sorted(changed.items()):
            entry = self.files.get(relative)
            kind = "updated" if entry is not None else "created"
            file_id = entry.file_id if entry is not None else relative
            if self._send(kind, relative, file_id, data, seen, digest):
                sent += 1
        self._save()
        return sent

    def _next_version(self, file_id: str) -> int:
        version = max(self.versions.get(file_id, 0) + 1, time.time_ns() // 1000)
        self.versions[file_id] = version
        return version

    def _post(self, event_id: str, body: dict[str, Any], what: str) -> str | None:
        """None when the server took the delivery; the reason when it refused it (4xx). Raises nothing: a
        server that cannot be reached leaves the change for the next sync."""
        import httpx

        try:
            r = self.sender.send(event_id, body)
        except httpx.HTTPError as exc:
            typer.secho(f"not sent (will retry): {what}: {exc}", fg="yellow", err=True)
            self.unsent = True
            raise _Unsent() from exc
        if r.status_code >= 400:
            reason = f"{r.status_code} {error_detail(r)}"
            if r.status_code == 413 and not self.by_path:
                reason += " (start the server with EVENTRAG_SOURCE_ROOT set to this folder and use --by-path)"
            typer.secho(f"refused: {what}: {reason}", fg="red", err=True)
            return reason
        return None

    def _send(
        self,
        kind: str,
        relative: str,
        file_id: str,
        data: bytes,
        seen: Seen,
        digest: str,
        renamed_from: str | None = None,
    ) -> bool:
        version = self._next_version(file_id)
        body = file_event_body(
            kind,
            workspace=self.workspace,
            file_id=file_id,
            path=relative,
            data=None if self.by_path else data,
            version=version,
        )
        what = f"{relative} (renamed from {renamed_from})" if renamed_from else relative
        try:
            refused = self._post(event_id_for("watch", self.workspace, file_id, version), body, what)
        except _Unsent:
            return False
        self.files[relative] = Entry(
            file_id=file_id,
            version=version,
            size=seen.size,
            mtime_ns=seen.mtime_ns,
            sha256=digest,
            inode=seen.inode,
            error=refused,
        )
        if refused is None:
            label = "renamed" if renamed_from else kind
            typer.echo(f"{label} {what} (version {version})")
        return True

    def _delete(self, relative: str, entry: Entry) -> bool:
        version = self._next_version(entry.file_id)
        body = file_event_body(
            "deleted", workspace=self.workspace, file_id=entry.file_id, path=relative, data=None, version=version
        )
        try:
            self._post(event_id_for("watch", self.workspace, entry.file_id, version), body, relative)
        except _Unsent:
            return False
        del self.files[relative]
        typer.echo(f"deleted {relative} (version {version})")
        return True


class _Unsent(Exception):
    pass


def manifest_path(data_dir: Path, folder: Path, server: str, workspace: str) -> Path:
    key = hashlib.sha256(f"{folder.resolve()}\x1f{server.rstrip('/')}\x1f{workspace}".encode()).hexdigest()[:16]
    return data_dir / "watch" / f"{key}.json"


@app.command()
def watch(
    folder: Annotated[Path, typer.Argument(help="the folder to watch", exists=True, file_okay=False)],
    workspace: Annotated[str, typer.Option(help="workspace the events are for")] = "default",
    server: ServerOpt = "http://127.0.0.1:8000",
    by_path: Annotated[
        bool, typer.Option("--by-path", help="send paths, not content (the server's EVENTRAG_SOURCE_ROOT is DIR)")
    ] = False,
    ignore: Annotated[list[str] | None, typer.Option(help="also ignore files matching this glob (repeatable)")] = None,
    include_hidden: Annotated[bool, typer.Option("--include-hidden", help="watch hidden files too")] = False,
    once: Annotated[bool, typer.Option("--once", help="send what changed since the last run, then exit")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Watch a folder and send a signed webhook for every create, change, move and delete, as a remote file
    source would; on start, first send what changed while it was not running."""
    import watchfiles

    from app.container import local_webhook_secrets

    settings = load_settings(data_dir)
    secrets, _ = local_webhook_secrets(settings)
    if workspace not in secrets:
        typer.secho(f"no webhook secret for workspace {workspace!r} in this configuration", fg="red", err=True)
        raise typer.Exit(2)
    sender = Sender(server, secrets[workspace][0])
    watcher = Watcher(
        folder,
        sender,
        manifest_path(settings.data_dir, folder, server, workspace),
        workspace=workspace,
        by_path=by_path,
        ignore=tuple(ignore or ()),
        include_hidden=include_hidden,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if not server_up(server):
            typer.secho(f"the server at {server} does not answer yet; changes are sent once it does", fg="yellow")
        sent = watcher.sync()
        typer.echo(f"{folder}: up to date with the server ({sent} change(s) sent)")
        if once:
            return
        typer.echo(f"watching {folder} (Ctrl-C to stop)")

        def relevant(_change: watchfiles.Change, path: str) -> bool:
            try:
                relative = Path(path).resolve().relative_to(watcher.folder).as_posix()
            except ValueError:
                return False
            return not watcher.ignored(relative)

        for changes in watchfiles.watch(
            folder,
            watch_filter=relevant,
            stop_event=stop,
            yield_on_timeout=True,
            rust_timeout=5000,
            raise_interrupt=False,
        ):
            if changes or watcher.unsent:
                watcher.sync()
    except KeyboardInterrupt:
        pass
    finally:
        sender.close()
        typer.echo("stopped")

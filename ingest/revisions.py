"""Revision names: which event wrote a revision's points, and what they are made of; and the clean-up of a
file's older revisions in the index (`drop_older_revisions`, the worker's step 6).

A revision is the set of points one event wrote for one file. Its name is `<position>#<fingerprint>`:

- the *position* of the event that wrote it (`stores.events`) orders revisions the way the order rule
  orders events, so "older" means what it means for events: the clean-up after a switch and reconcile's
  *orphan* are the revisions older than the applied position;
- the *fingerprint* names what the points are made of: the bytes, the content type, the path, the metadata,
  the chunking and the model. Two events with the same fingerprint would write the same points (except
  their `version`), so a re-sent unchanged file *keeps* the active revision: the registry moves to the new
  event's position, the revision name stays, and nothing is parsed, embedded or written.

Keeping is what makes "older" subtle: a kept revision's name carries the position of the event that first
wrote it, older than the applied one. Two rules keep the clean-up safe anyway (docs/consistency.md):

1. the clean-up and reconcile never delete the active revision, whatever its name says;
2. a revision that stopped being active never becomes active again: keeping is a compare-and-set on the
   registry's revision as well as its position (`StateStore.switch_document(..., if_revision=...)`), so
   only a revision that is still active can be kept. So a non-active revision older than the applied
   position is garbage for good, and deleting it can never take points from under a search.

Names written before fingerprints (a bare position, or a legacy `v:`/`s:`/`t:` one) parse as a position with
no fingerprint: they are never kept, and order like any position.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence

from stores.events import EventKey, FileEvent, position_is_newer
from stores.ports import VectorIndex

# Bump when chunking or the point layout changes, so unchanged files are re-indexed the new way.
REVISION_FORMAT = 1
_FINGERPRINT = re.compile(r"[0-9a-f]{32}")


def fingerprint(
    event: FileEvent, data: bytes, *, content_type: str | None, model_id: str, chunking: tuple[int, ...]
) -> str:
    """What the points of `event` would be made of. The version is left out on purpose: a new version of
    the same content keeps the revision (its citations take the version from the document record)."""
    h = hashlib.sha256()
    head = {
        "format": REVISION_FORMAT,
        "model": model_id,
        "chunking": list(chunking),
        "path": event.path,
        "content_type": content_type,
        "metadata": event.metadata,
    }
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    h.update(b"\x00")
    h.update(data)
    return h.hexdigest()[:32]


def revision_name(position: str, fingerprint: str) -> str:
    return f"{position}#{fingerprint}"


def revision_position(revision: str) -> str:
    """The position of the event that wrote `revision`."""
    head, sep, tail = revision.rpartition("#")
    return head if sep and _FINGERPRINT.fullmatch(tail) else revision


def revision_fingerprint(revision: str | None) -> str | None:
    if revision is None:
        return None
    _, sep, tail = revision.rpartition("#")
    return tail if sep and _FINGERPRINT.fullmatch(tail) else None


def is_older(revision: str, position: str) -> bool:
    """Whether `revision` was written by an event older than `position` (the order rule)."""
    return position_is_newer(position, revision_position(revision))


def drop_older_revisions(
    index: VectorIndex,
    files: Sequence[tuple[FileEvent, str | None]],
    found: dict[EventKey, dict[str, int]] | None = None,
) -> None:
    """For each (event, its active revision): delete the file's points of revisions older than the
    event's position, except the active one (a kept revision's name is older than the event that keeps
    it). A revision newer than it belongs to an event still being applied (or waiting for a retry) and
    is left alone. One read per workspace finds them all, unless `found` has them."""
    if found is None:
        found = revisions_of(index, [ev for ev, _ in files])
    for ev, active in files:
        stale = [r for r in found.get(ev.key, {}) if r != active and is_older(r, ev.position)]
        if stale:
            index.delete_revisions(ev.workspace, ev.file_id, stale)


def revisions_of(index: VectorIndex, events: Sequence[FileEvent]) -> dict[EventKey, dict[str, int]]:
    """The points per revision of each event's file, in one index read per workspace."""
    found: dict[EventKey, dict[str, int]] = {}
    for ws in dict.fromkeys(ev.workspace for ev in events):
        mine = [ev for ev in events if ev.workspace == ws]
        counts = index.revisions_of(ws, [ev.file_id for ev in mine])
        found.update({ev.key: counts.get(ev.file_id, {}) for ev in mine})
    return found

"""S3 notifications as file events, read as S3 means them.

- `ObjectCreated:*` -> `file.updated`.
- A delete marker (`ObjectRemoved:DeleteMarkerCreated`, `LifecycleExpiration:DeleteMarkerCreated`): the
  object is gone from the bucket's listing -> `file.deleted`.
- `ObjectRemoved:Delete` / `LifecycleExpiration:Delete` without a version id (an unversioned bucket): the
  object is gone -> `file.deleted`.
- The same with a version id (a versioned bucket): one version was removed for good. Removing a
  non-current version changes nothing; removing the current one brings the previous version back;
  removing a delete marker brings the object back. The notification does not say which, so the event is a
  *re-sync*: the worker reads the object's current state (a file that is no longer there is a delete).

S3 cannot notify a FIFO queue, so the s3 Lambda function maps each notification here and queues it the way a
webhook is queued (`record_and_enqueue`). The notification format:
https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html

- The file is the object: file id and URL `s3://bucket/key`, path = the key (URL-decoded: S3 sends keys
  form-encoded, a space as `+`). All objects go to one workspace (`EVENTRAG_S3_WORKSPACE`).
- Order: S3 delivers notifications late, twice or out of order. Like every event, a notification is placed
  by the rule of docs/consistency.md: `eventTime` (milliseconds, when S3 finished the request) first, then
  the kind, then the object's `sequencer`, compared as S3 documents it (right-padded, `stores.events`), so
  a stale notification is recorded as superseded.
- The event id is derived from bucket, key and sequencer: Lambda's retries of one invocation, and S3's
  duplicate deliveries, map to the same event, which is stored and queued once.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from ingest.receiver import record_and_enqueue
from stores.events import MAX_SEQUENCER_DIGITS, EventType, FileEvent
from stores.ports import JobQueue, StateStore

log = logging.getLogger(__name__)

_SEQUENCER = re.compile(rf"[0-9A-Fa-f]{{1,{MAX_SEQUENCER_DIGITS}}}")


def _meaning(event_name: str, version_id: Any) -> tuple[EventType, bool] | None:
    """(kind, re-sync) for a notification name; None when the object's content did not change."""
    family, _, detail = event_name.partition(":")
    if family == "ObjectCreated":
        return EventType.UPDATED, False
    if family in ("ObjectRemoved", "LifecycleExpiration"):
        if detail == "DeleteMarkerCreated":
            return EventType.DELETED, False
        if detail == "Delete":
            return (EventType.UPDATED, True) if version_id else (EventType.DELETED, False)
    return None  # e.g. ObjectRestore, Replication, LifecycleTransition, ObjectTagging


def s3_file_event(record: Mapping[str, Any], workspace: str) -> FileEvent | None:
    """One notification record -> a file event; None for records that are not about an object's content."""
    if record.get("eventSource") != "aws:s3":
        return None
    s3 = record["s3"]
    meaning = _meaning(str(record.get("eventName", "")), s3.get("object", {}).get("versionId"))
    if meaning is None:
        return None
    kind, resync = meaning
    bucket = s3["bucket"]["name"]
    key = unquote_plus(s3["object"]["key"])
    if key.endswith("/"):
        return None  # a "folder" placeholder the console creates, not a file
    sequencer = s3["object"].get("sequencer") or None
    if sequencer is not None and not _SEQUENCER.fullmatch(str(sequencer)):
        log.warning("ignoring a malformed S3 sequencer %.80r for %s", sequencer, key)
        sequencer = None
    timestamp = datetime.fromisoformat(str(record["eventTime"]).replace("Z", "+00:00"))
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    url = f"s3://{bucket}/{key}"
    # Without a sequencer (never seen for object events) the time and event name keep ids distinct.
    identity = f"{bucket}\n{key}\n{sequencer or record['eventTime'] + record['eventName']}"
    return FileEvent(
        event_id="s3-" + hashlib.sha256(identity.encode("utf-8")).hexdigest()[:40],
        workspace=workspace,
        type=kind,
        file_id=url,
        path=key,
        sequencer=sequencer,
        timestamp=timestamp,
        url=url,
        resync=resync,
    )


def receive_s3_notification(
    event: Mapping[str, Any], *, state: StateStore, queue: JobQueue, settings_workspace: str
) -> int:
    """Store and queue the file events of one S3 notification; returns how many records became events
    (already known ones included, so a retried invocation reports the same number)."""
    if event.get("Event") == "s3:TestEvent":  # sent once when a notification configuration is saved
        return 0
    accepted = 0
    for record in event.get("Records", []):
        file_event = s3_file_event(record, settings_workspace)
        if file_event is None:
            log.info("ignoring S3 record %s", record.get("eventName"))
            continue
        delivery = record_and_enqueue(file_event, state=state, queue=queue)
        log.info(
            "S3 %s %s -> event %s (%s)",
            record.get("eventName"),
            file_event.url,
            file_event.event_id,
            "duplicate" if delivery.duplicate else delivery.record.status.value,
        )
        accepted += 1
    return accepted

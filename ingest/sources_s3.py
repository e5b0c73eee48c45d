"""The S3 content source: the bytes of `s3://bucket/key` (what S3 notifications and webhooks point at).

`ContentRouter` hands it events whose `url` has the `s3` scheme (`extra={"s3": S3Source(...)}`). With a
default bucket, an event with a plain `path` is read from that bucket, and URLs naming another bucket are
refused, so a webhook cannot make the worker read a bucket it was not meant to index.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ingest.errors import SourceNotFoundError, SourceUnavailableError
from stores.events import FileEvent
from stores.ports import FetchedFile

# What S3 answers for a key or bucket that is not there. A missing key reads as AccessDenied instead when
# the caller may not s3:ListBucket; the ingest role may (serverless.yml), so a 403 stays a transient error.
_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "404", "NotFound"})


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key). The key is everything after the bucket, unchanged."""
    if not url.lower().startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, key = url[5:].partition("/")
    if not bucket or not key:
        raise ValueError(f"an s3:// URL needs a bucket and a key: {url!r}")
    return bucket, key


class S3Source:
    def __init__(self, client: Any | None = None, bucket: str | None = None) -> None:
        if client is None:
            import boto3

            client = boto3.session.Session().client("s3")
        self.client = client
        self.bucket = bucket

    def locate(self, event: FileEvent) -> tuple[str, str]:
        if event.url is not None:
            try:
                bucket, key = parse_s3_url(event.url)
            except ValueError as exc:
                raise SourceNotFoundError(str(exc)) from exc
            if self.bucket is not None and bucket != self.bucket:
                raise SourceNotFoundError(f"{event.url!r} is outside the source bucket {self.bucket!r}")
            return bucket, key
        if self.bucket is None:
            raise SourceNotFoundError(f"event {event.event_id} has no s3:// URL and no default bucket is set")
        return self.bucket, event.path

    def fetch(self, event: FileEvent) -> FetchedFile:
        bucket, key = self.locate(event)
        where = f"s3://{bucket}/{key}"
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND:
                raise SourceNotFoundError(f"{where} does not exist ({code})") from exc
            raise SourceUnavailableError(f"cannot read {where}: {code or exc}") from exc
        except BotoCoreError as exc:  # connection errors, timeouts, a response cut short
            raise SourceUnavailableError(f"cannot read {where}: {exc}") from exc
        # S3 stores the Content-Type it was uploaded with (often a generic binary/octet-stream, which the
        # parser treats as saying nothing).
        return FetchedFile(data, response.get("ContentType"))

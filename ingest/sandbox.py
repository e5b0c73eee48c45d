"""Parsing in child processes, within a time and a memory budget, so a hostile file cannot take the worker
down.

PDF, Office and HTML parsers are large C and Python libraries reading attacker-controlled bytes: a file
can make one loop for ever, allocate gigabytes (a ZIP bomb inside a DOCX) or crash it. `ParserPool` runs
`ingest.parsing.parse` in long-lived child processes (`python -m ingest.sandbox`), one file at a time each
(small UTF-8 text and Markdown files, whose parse is a linear scan, are parsed in place:
`ingest.parsing.parses_in_place`):

- *memory*: the child caps its own address space (`RLIMIT_AS`) at what it uses after importing the
  parsers plus the budget, so an allocation past it fails inside the child (a `MemoryError`, or the parser
  dies), never in the worker;
- *time*: the parent waits for the answer until the deadline, then kills the child (SIGKILL) and starts a
  fresh one for the next file;
- *crashes*: a child that dies (a segfault in a parser) is reported and replaced.

Over budget or crashed, the event fails with `ParseBudgetError` / `ParseError` (permanent: retrying the
same bytes gives the same result) and the file's previous version stays searchable.

The child's answers are JSON, never pickle: a child compromised by a hostile file must not be able to run
code in the worker by what it sends back. Frames are length-prefixed, and bounded.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from typing import IO, Any

from ingest.errors import ParseBudgetError, ParseError, UnsupportedContentError
from ingest.formats.base import Location, ParsedDocument
from ingest.parsing import ParseLimits, parse, parses_in_place

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">Q")  # every frame: an 8-byte length, then that many bytes
_STARTUP_SECONDS = 120.0  # importing the parsers on a loaded machine (a Lambda cold start, 2 busy cores)


class ParserPool:
    """`parse(data, content_type, path)` like `ingest.parsing.parse`, run in child processes.

    Up to `processes` children, started on first use and reused; calls from more threads than that wait
    for a free child. `close()` stops them.
    """

    def __init__(
        self,
        *,
        timeout_seconds: float = 60.0,
        max_memory_mb: int = 1024,
        limits: ParseLimits | None = None,
        processes: int = 1,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self.max_memory_mb = max_memory_mb
        self.limits = limits or ParseLimits()
        self._idle: queue.LifoQueue[_Child] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(processes)
        self._lock = threading.Lock()
        self._children: set[_Child] = set()
        self._closed = False

    def __call__(self, data: bytes, content_type: str | None, path: str) -> ParsedDocument:
        return self.parse(data, content_type, path)

    def parse(self, data: bytes, content_type: str | None, path: str) -> ParsedDocument:
        if len(data) > self.limits.max_bytes or parses_in_place(data, content_type, path):
            # refused before any child is involved, or a small UTF-8 text or Markdown file (linear to parse)
            return parse(data, content_type, path, self.limits)
        with self._slots:
            child = self._take()
            healthy = False
            try:
                answer = child.ask(
                    {"content_type": content_type, "path": path, "limits": asdict(self.limits)},
                    data,
                    timeout=self.timeout_seconds,
                    # UTF-8 JSON: at most 6 bytes per character (a "\u001f" escape), and the locations.
                    max_answer=self.limits.max_chars * 6 + (1 << 20),
                )
                healthy = answer.get("kind") != "memory" and not answer.get("retire")
            except _Timeout:
                raise ParseBudgetError(
                    f"parsing {path!r} took longer than the budget of {self.timeout_seconds:g} s"
                    " (EVENTRAG_PARSING__TIMEOUT_SECONDS): stopped; the file may be malformed or hostile"
                ) from None
            except _ChildDied as died:
                raise ParseError(
                    f"the parser process died while parsing {path!r} ({died}); it may have run out of its"
                    f" memory budget of {self.max_memory_mb} MB (EVENTRAG_PARSING__MAX_MEMORY_MB) or crashed on"
                    " a malformed file"
                ) from None
            finally:
                self._give_back(child, healthy)
        return _answer_to_document(answer, path, self.max_memory_mb)

    def start(self) -> None:
        """Start a child now (a running server has one from its first file on), so the next file does not
        wait for a child to import the parsers."""
        with self._slots:
            self._give_back(self._take(), True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            children, self._children = list(self._children), set()
        for child in children:
            child.stop()

    def _take(self) -> _Child:
        try:
            child = self._idle.get_nowait()
            if child.alive():
                return child
            self._forget(child)
        except queue.Empty:
            pass
        child = _Child.start(self.max_memory_mb)
        with self._lock:
            if self._closed:
                child.stop()
                raise ParseError("the parser pool is closed")
            self._children.add(child)
        return child

    def _give_back(self, child: _Child, healthy: bool) -> None:
        if healthy and child.alive():
            self._idle.put(child)
        else:
            child.stop()
            self._forget(child)

    def _forget(self, child: _Child) -> None:
        with self._lock:
            self._children.discard(child)


def _answer_to_document(answer: dict[str, Any], path: str, max_memory_mb: int) -> ParsedDocument:
    kind = answer.get("kind")
    if kind == "ok":
        doc = answer["document"]
        return ParsedDocument(
            text=doc["text"],
            content_type=doc["content_type"],
            title=doc["title"],
            charset=doc["charset"],
            locations=tuple(Location(**loc) for loc in doc["locations"]),
        )
    message = str(answer.get("message", "no message"))
    if kind == "unsupported":
        raise UnsupportedContentError(message)
    if kind == "memory":
        raise ParseBudgetError(
            f"parsing {path!r} needed more than the memory budget of {max_memory_mb} MB"
            " (EVENTRAG_PARSING__MAX_MEMORY_MB): stopped; the file may be a decompression bomb or too large"
        )
    raise ParseError(f"the parser failed on {path!r}: {message}")


class _Timeout(Exception):
    pass


class _ChildDied(Exception):
    pass


class _Child:
    """One `python -m ingest.sandbox` process and its pipes."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    @classmethod
    def start(cls, max_memory_mb: int) -> _Child:
        process = subprocess.Popen(
            [sys.executable, "-m", "ingest.sandbox", str(max_memory_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            # Its own process group: a terminal's Ctrl-C goes to the worker, which stops children itself.
            start_new_session=True,
        )
        child = cls(process)
        # Wait for the child to have imported the parsers: start-up is not part of any file's time budget.
        assert process.stdout is not None
        try:
            _read_frame(process.stdout, time.monotonic() + _STARTUP_SECONDS, 1024, child)
        except (_Timeout, _ChildDied) as exc:
            child.stop()
            raise ParseError(f"the parser process did not start ({exc or 'no answer'})") from None
        return child

    def alive(self) -> bool:
        return self.process.poll() is None

    def ask(self, request: dict[str, Any], data: bytes, *, timeout: float, max_answer: int) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout
        header = json.dumps(request).encode()
        try:
            # The child reads the whole request before it parses, so these writes cannot deadlock with it.
            _write_frame(self.process.stdin, header)
            _write_frame(self.process.stdin, data)
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise _ChildDied(self._death()) from exc
        raw = _read_frame(self.process.stdout, deadline, max_answer, self)
        try:
            answer: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise _ChildDied("it sent an unreadable answer") from exc
        return answer

    def _death(self) -> str:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "it stopped answering"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - the kernel did not reap it in time
            log.warning("parser process %d did not exit after SIGKILL", self.process.pid)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


def _write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_HEADER.pack(len(payload)))
    stream.write(payload)


def _read_frame(stream: IO[bytes], deadline: float, limit: int, child: _Child) -> bytes:
    """One frame from the child, or `_Timeout` at the deadline (the child is killed), or `_ChildDied`."""
    fd = stream.fileno()
    buffer = bytearray()
    wanted = _HEADER.size
    length: int | None = None
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                child.stop()
                raise _Timeout()
            piece = os.read(fd, min(1 << 20, wanted - len(buffer)))
            if not piece:
                raise _ChildDied(child._death())
            buffer.extend(piece)
            if len(buffer) < wanted:
                continue
            if length is None:
                (length,) = _HEADER.unpack(buffer)
                if length > limit:
                    child.stop()
                    raise _ChildDied(f"it sent an answer of {length} bytes, over the bound of {limit}")
                buffer.clear()
                wanted = length
                if wanted == 0:
                    return b""
                continue
            return bytes(buffer)


# --- the child ---------------------------------------------------------------------------------------------


def _read_exact(stream: IO[bytes], n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        piece = stream.read(n - got)
        if not piece:
            return None
        chunks.append(piece)
        got += len(piece)
    return b"".join(chunks)


def _read_child_frame(stream: IO[bytes]) -> bytes | None:
    head = _read_exact(stream, _HEADER.size)
    if head is None:
        return None
    (length,) = _HEADER.unpack(head)
    return _read_exact(stream, length)


def _vm(field: str) -> int:
    """A `/proc/self/status` size in bytes (VmSize: mapped now, VmPeak: the most ever), 0 if unknown."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - no /proc (macOS)
        pass
    return 0


def _limit_memory(budget_mb: int) -> int | None:
    """Cap the address space at what is mapped now (interpreter and parsers loaded) plus the budget;
    returns the cap."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not a POSIX system: no limit
        return None
    limit = _vm("VmSize") + budget_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return limit


def _ran_out(limit: int | None) -> bool:
    """Did the process reach its memory cap? C libraries report a failed allocation in their own words
    (libxml2 says "unknown error"), so an error raised near the cap counts as running out of memory."""
    return limit is not None and _vm("VmPeak") >= limit - 64 * 1024 * 1024


def _preload() -> None:
    """Import every parser now, so imports neither count against a file's budget nor its time."""
    import bs4  # noqa: F401
    import charset_normalizer  # noqa: F401
    import docx  # noqa: F401
    import openpyxl  # noqa: F401
    import pptx  # noqa: F401
    import pypdfium2  # noqa: F401

    import ingest.formats.office  # noqa: F401
    import ingest.formats.pdf  # noqa: F401
    import ingest.formats.sheets  # noqa: F401


def _serve(budget_mb: int) -> None:
    # Frames go to the real stdout; anything a library prints goes to stderr instead of corrupting them.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    _preload()
    limit = _limit_memory(budget_mb)
    _write_frame(answers, b'{"kind": "ready"}')
    answers.flush()
    while True:
        header = _read_child_frame(requests)
        data = _read_child_frame(requests) if header is not None else None
        if header is None or data is None:
            return  # the worker closed the pipe: exit quietly
        request = json.loads(header)
        try:
            document = parse(data, request["content_type"], request["path"], ParseLimits(**request["limits"]))
            answer: dict[str, Any] = {"kind": "ok", "document": asdict(document)}
        except MemoryError:
            answer = {"kind": "memory", "message": "out of memory"}
        except UnsupportedContentError as exc:
            kind = "memory" if _ran_out(limit) else "unsupported"
            answer = {"kind": kind, "message": str(exc)}
        except Exception as exc:  # a parser bug on a malformed file: reported, the child lives on
            kind = "memory" if _ran_out(limit) else "error"
            answer = {"kind": kind, "message": f"{type(exc).__name__}: {exc}"}
        del data
        # Memory may be fragmented or a library left half-initialised; and VmPeak (what `_ran_out` reads)
        # only grows: after a file that came near the cap, a fresh child judges the next file on its own.
        retire = answer["kind"] == "memory" or _ran_out(limit)
        answer["retire"] = retire
        try:
            try:
                payload = json.dumps(answer, ensure_ascii=False).encode()
            except UnicodeEncodeError:  # a lone surrogate: escaped, it survives the trip exactly
                payload = json.dumps(answer).encode()
        except MemoryError:
            payload = json.dumps({"kind": "memory", "message": "out of memory"}).encode()
        _write_frame(answers, payload)
        answers.flush()
        if retire:
            return


if __name__ == "__main__":
    _serve(int(sys.argv[1]))

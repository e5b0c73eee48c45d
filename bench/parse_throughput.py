"""Benchmark: parse throughput and peak memory per format, the PDF library choice, and the share of ingest
time that parsing takes next to embedding.

1. *Formats*: generated files of 10, 100 and 1,000 pages (a PDF page or a slide is a page; a DOCX "page"
   is ~3,000 characters; an XLSX "page" is 50 rows; HTML and text pages are ~3,000 characters), parsed by
   `ingest.parsing.parse` each in a fresh process: pages/s, MB/s, and the peak RSS the parse added to
   the process (VmHWM after the parse less VmRSS before it, the peak reset through /proc/self/clear_refs).
2. *PDF libraries*: pypdfium2 (our choice), pypdf and pdfplumber on the same PDFs: speed, peak memory,
   and reading order on a two-column page.
3. *Ingest share*: the production worker (real all-MiniLM-L6-v2, Qdrant local mode, parse sandbox on)
   indexes PDFs of 10 and 100 pages; parse time is measured inside the same run.

    python bench/parse_throughput.py [--quick] [--json OUT]

`--quick` stops at 100 pages. Figures from a run are in docs/parsing.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.documents import (  # noqa: E402
    Slide,
    docx_bytes,
    pdf_bytes,
    pptx_bytes,
    two_column_page,
    wrap_paragraphs,
    xlsx_bytes,
)

SENTENCE = (
    "the quarterly report describes revenue growth in every region while the engineering teams shipped "
    "new features for customers and the support desk answered questions about invoices contracts and "
    "delivery times across the network of partners suppliers and offices"
)
WORDS = SENTENCE.split()


def sentence(i: int) -> str:
    words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(18)]
    return " ".join(words).capitalize() + f" (item {i})."


def paragraphs(page: int, n: int = 6) -> list[str]:
    return [" ".join(sentence(page * 100 + p * 10 + s) for s in range(4)) for p in range(n)]


def make(fmt: str, pages: int) -> tuple[bytes, str]:
    if fmt == "pdf":
        return pdf_bytes([wrap_paragraphs(paragraphs(p)) for p in range(pages)]), "doc.pdf"
    if fmt == "docx":
        blocks: list[tuple[str, object]] = []
        for p in range(pages):
            blocks.append(("h2", f"Section {p + 1}"))
            blocks.extend(("p", text) for text in paragraphs(p))
        return docx_bytes(blocks), "doc.docx"
    if fmt == "pptx":
        slides = [
            Slide(f"Slide {p + 1}", [sentence(p * 10 + k) for k in range(5)], notes=sentence(p)) for p in range(pages)
        ]
        return pptx_bytes(slides), "deck.pptx"
    if fmt == "xlsx":
        rows: list[list[object]] = [["Item", "Region", "Revenue", "Comment"]]
        rows += [[f"item {i}", WORDS[i % len(WORDS)], i * 13.5, sentence(i)[:60]] for i in range(pages * 50)]
        return xlsx_bytes({"Data": rows}), "book.xlsx"
    if fmt == "html":
        body = "".join(f"<h2>Section {p}</h2>" + "".join(f"<p>{t}</p>" for t in paragraphs(p)) for p in range(pages))
        return f"<html><head><title>Report</title></head><body>{body}</body></html>".encode(), "page.html"
    if fmt == "txt":
        return "\n\n".join("\n\n".join(paragraphs(p)) for p in range(pages)).encode(), "notes.txt"
    raise ValueError(fmt)


# One parse in a fresh interpreter: the peak RSS it adds is what a sandbox child needs for that file.
CHILD = r"""
import json, sys, time, io
lib, path, name = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(path, "rb").read()
if lib == "eventrag":
    from ingest.parsing import parse, ParseLimits
    import ingest.formats.pdf, ingest.formats.office, ingest.formats.sheets, pypdfium2, docx, pptx, openpyxl
    run = lambda: parse(data, None, name, ParseLimits(max_rows=10**7)).text
elif lib == "pypdf":
    import pypdf
    run = lambda: "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(data)).pages)
elif lib == "pdfplumber":
    import pdfplumber
    def run():
        with pdfplumber.open(io.BytesIO(data)) as pdf:
            return "\n".join(p.extract_text() or "" for p in pdf.pages)
elif lib == "pypdfium2":
    import pypdfium2
    def run():
        doc = pypdfium2.PdfDocument(data)
        return "\n".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS (VmHWM) to the current RSS
before = status("VmRSS")
start = time.perf_counter()
text = run()
seconds = time.perf_counter() - start
peak = status("VmHWM")
print(json.dumps({"seconds": seconds, "peak_mb": peak - before, "chars": len(text), "text": text[:4000]}))
"""


def measure(lib: str, data: bytes, name: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=name) as fh:
        fh.write(data)
        fh.flush()
        out = subprocess.run(
            [sys.executable, "-c", CHILD, lib, fh.name, name], capture_output=True, text=True, cwd=ROOT, check=True
        )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def formats(sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    for fmt in ("pdf", "docx", "pptx", "xlsx", "html", "txt"):
        for pages in sizes:
            data, name = make(fmt, pages)
            r = measure("eventrag", data, name)
            rows.append(
                {
                    "format": fmt,
                    "pages": pages,
                    "mb": round(len(data) / 1e6, 3),
                    "seconds": round(r["seconds"], 3),
                    "pages_per_s": round(pages / r["seconds"], 1),
                    "mb_per_s": round(len(data) / 1e6 / r["seconds"], 2),
                    "peak_mb": round(r["peak_mb"], 1),
                    "chars": r["chars"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def pdf_libraries(sizes: list[int]) -> dict[str, Any]:
    columns = pdf_bytes(
        [two_column_page([f"Left line {i}" for i in range(1, 4)], [f"Right line {i}" for i in range(1, 4)])]
    )
    out: dict[str, Any] = {"speed": [], "reading_order": {}}
    for lib in ("pypdfium2", "pypdf", "pdfplumber"):
        text = measure(lib, columns, "columns.pdf")["text"]
        out["reading_order"][lib] = text.find("Left line 3") < text.find("Right line 1")
        for pages in sizes:
            if lib == "pdfplumber" and pages > 100:
                continue  # minutes per run: 10 and 100 pages show the trend
            data, name = make("pdf", pages)
            r = measure(lib, data, name)
            out["speed"].append(
                {
                    "library": lib,
                    "pages": pages,
                    "pages_per_s": round(pages / r["seconds"], 1),
                    "peak_mb": round(r["peak_mb"], 1),
                }
            )
            print(json.dumps(out["speed"][-1]), flush=True)
    print(json.dumps({"reading_order_two_columns": out["reading_order"]}), flush=True)
    return out


def ingest_share(sizes: list[int]) -> list[dict[str, Any]]:
    """Index PDFs through the production worker; parse time is measured in the same run (sandbox on)."""
    import base64

    from app.container import build_container
    from app.settings import Settings
    from ingest.sandbox import ParserPool
    from ingest.webhook_body import build_event, parse_webhook_body
    from stores.events import EventKey, EventStatus

    rows = []
    for pages in sizes:
        data, name = make("pdf", pages)
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(data_dir=Path(tmp), webhook_secrets={}, qdrant_url=None)
            c = build_container(settings)
            try:
                worker = c.worker
                timed = _TimedParser(worker.planner.parser)
                worker.planner.parser = timed
                body = {
                    "type": "file.created",
                    "timestamp": "2026-01-01T00:00:00Z",
                    "data": {
                        "file_id": name,
                        "path": name,
                        "version": 1,
                        "content_base64": base64.b64encode(data).decode(),
                    },
                }
                event = build_event("bench-1", "default", parse_webhook_body(json.dumps(body).encode()))
                c.state.add_event(event, EventStatus.QUEUED)
                _ = c.embedder.dimension  # the model is loaded before the clock starts
                if isinstance(worker.planner.parser, _TimedParser) and isinstance(timed.inner, ParserPool):
                    timed.inner.parse(b"warm", "text/plain", "warm.txt")  # the child is started, too
                    timed.seconds = 0.0
                start = time.perf_counter()
                key = EventKey("default", "bench-1")
                outcome = worker.process([key])[key]
                total = time.perf_counter() - start
                doc = c.state.get_document("default", name)
            finally:
                c.close()
        rows.append(
            {
                "pages": pages,
                "chunks": doc.chunk_count if doc else None,
                "ingest_seconds": round(total, 2),
                "parse_seconds": round(timed.seconds, 3),
                "parse_share": round(timed.seconds / total, 4),
                "outcome": outcome.detail,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


class _TimedParser:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0

    def __call__(self, data: bytes, content_type: str | None, path: str) -> Any:
        start = time.perf_counter()
        try:
            return self.inner(data, content_type, path)
        finally:
            self.seconds += time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 and 100 pages only")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    sizes = [10, 100] if args.quick else [10, 100, 1000]
    report = {
        "formats": formats(sizes),
        "pdf_libraries": pdf_libraries(sizes),
        "ingest_share": ingest_share([10, 100]),
        "cpus": os.cpu_count(),
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

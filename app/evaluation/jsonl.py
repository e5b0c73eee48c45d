"""JSON Lines files of an evaluation dataset (BEIR's corpus and queries, the rationales of `--answers`)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def read_jsonl(
    path: Path, *, fields: Sequence[str], error: type[Exception], missing: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line. Raises `error` naming the file (with `missing` when
    it is not there) or the file and line (a line that is not a JSON object holding every one of `fields`)."""
    if not path.is_file():
        raise error(f"{path} is missing{missing}")
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{line_no}: not JSON: {exc}") from exc
            if not isinstance(row, dict) or any(f not in row for f in fields):
                raise error(f"{path}:{line_no}: expected a JSON object with {', '.join(fields)}")
            yield line_no, row

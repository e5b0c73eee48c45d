"""The web page served at `/`: static files in `static/`, no build step, no requests to other hosts."""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"

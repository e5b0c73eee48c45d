"""`python -m app.cli`: the same entry point as the `eventrag` script."""

from app.cli import main

main()

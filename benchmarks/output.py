"""How a benchmark or evaluation tool hands back its result: one JSON object on stdout, and, with
`--out PATH`, the same text in a file (the README's results table is built from such files by
`python -m tools.results_table`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_out_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default=None, metavar="PATH", help="also write the JSON result to this file"
    )


def emit(result: dict, out: str | None) -> None:
    """Print `result` as indented JSON; with `out`, write the same text there (folders made)."""
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")

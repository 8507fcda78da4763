"""The README's results table, built from the JSON files that the benchmark commands write:
`python -m tools.results_table [--run] [--write README.md | --check README.md]`.

Three commands measure the fused hand against its peers (MediaPipe's own landmarks, the HAMR
network alone) and write JSON into docs/results/ (`SOURCES`, each with `--out`). This tool reads
those files and renders one Markdown table, every number in it a value of the file its row
names (rounded). `--write` replaces the block between the README's `results-table` markers,
`--check` fails when the README's block differs from a fresh rendering, `--run` re-runs the
three commands first (one thread each, several minutes). tests/test_docs.py checks each number
of the README's table against the file its row names, apart from this tool.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- results-table: begin (python -m tools.results_table --write README.md) -->"
END = "<!-- results-table: end -->"


@dataclass(frozen=True)
class Source:
    """A command that writes one JSON file of results."""

    out: str  # the JSON file, relative to the repository
    module: str
    args: tuple[str, ...]

    @property
    def argv(self) -> list[str]:
        return ["-m", self.module, *self.args, "--out", self.out]

    @property
    def command(self) -> str:
        return f"OMP_NUM_THREADS=1 .venv/bin/python {' '.join(self.argv)}"


SOURCES = {
    "accuracy": Source(
        "docs/results/accuracy.json", "benchmarks.accuracy", ("--count", "160", "--threads", "1")
    ),
    "video": Source(
        "docs/results/video.json", "tools.eval_video", ("--photos", "3", "--threads", "1")
    ),
    "serve": Source(
        "docs/results/serve.json",
        "benchmarks.serve",
        ("--threads", "1", "--repeats", "41", "--skip-hardening", "--frames", "30"),
    ),
}


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    """(what, hands, MediaPipe, network alone, fused, source key) per row, as text."""
    syn = results["accuracy"]["synthetic"]
    real = results["accuracy"]["samples"]
    clips = results["video"]["mean"]
    cpu = next(r for r in results["serve"]["results"] if r["device"] == "cpu")
    both = cpu.get("all_cores") or {}

    def three(block: dict, dim: str, digits: int) -> tuple[str, str, str]:
        return tuple(
            _num(block.get(f"{w}_{dim}"), digits) for w in ("mediapipe", "network", "fused")
        )  # type: ignore[return-value]

    synthetic_hands = f"{syn['hands']} of {syn['crops']}"
    real_hands = f"{real['found_by_mediapipe']} of {real['hands']}"
    return [
        ("synthetic test split: 2D error, px of the 256-px crop", synthetic_hands,
         *three(syn, "2d", 2), "accuracy"),
        ("synthetic test split: 3D PA-MPJPE, mm", synthetic_hands, *three(syn, "3d", 2),
         "accuracy"),
        ("real photos (`../shared/samples`): 2D error, hand-box sides", real_hands,
         *three(real, "2d", 4), "accuracy"),
        ("real photos, InterHand2.6M: 3D PA-MPJPE, mm", str(real["hands_with_3d"]),
         *three(real, "3d", 1), "accuracy"),
        ("a photo, ms: MediaPipe's one pass / the network on a given box / no box over HTTP "
         "(find, predict, fuse)", "–", _num(cpu["mediapipe_in_process_ms"], 1),
         _num(cpu["photo_direct_ms"], 1), _num(cpu["photo_http_detected_fused_ms"], 1), "serve"),
        ("the same photo with no box, the server on every core (`hamr serve`'s default), ms",
         "–", _num(both.get("mediapipe_in_process_ms"), 1), "–",
         _num(both.get("photo_http_detected_fused_ms"), 1), "serve"),
        ("the fusion alone, ms per hand", synthetic_hands, "–", "–",
         _num(syn["fusion_ms_median"], 1), "accuracy"),
        ("video (720p, one hand), frames per second end to end", "–", _num(
            clips["mediapipe_video_fps"], 1), "–", _num(clips["fps"], 1), "video"),
        ("video of a still hand: jitter, px RMS", "–", _num(clips["mediapipe_video_jitter_px"], 2),
         "–", _num(clips["jitter_px"], 2), "video"),
    ]  # fmt: skip


def load(root: Path = ROOT) -> dict[str, dict[str, Any]]:
    return {key: json.loads((root / s.out).read_text()) for key, s in SOURCES.items()}


def render(results: dict[str, dict[str, Any]]) -> str:
    """The Markdown block between the markers: the table, then the commands that write its files."""
    lines = [
        "| measure | hands | MediaPipe's landmarks | "
        "network alone | fused (HAMR's default) | file |",
        "|---|---|---|---|---|---|",
    ]
    for what, hands, mp, net, fused, key in rows(results):
        out = SOURCES[key].out
        lines.append(f"| {what} | {hands} | {mp} | {net} | {fused} | [{Path(out).name}]({out}) |")
    lines += ["", "Each file is written by one command (then `python -m tools.results_table "
              "--write README.md` fills this table from them):", "", "```"]  # fmt: skip
    lines += [s.command for s in SOURCES.values()]
    lines += ["```"]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """`text` with the part between BEGIN and END replaced by `block`."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + block + "\n" + text[end:]


def run_sources() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for source in SOURCES.values():
        print(f"$ {source.command}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, *source.argv], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="store_true", help="re-run the three commands first")
    ap.add_argument("--write", metavar="README", help="replace the table in this file")
    ap.add_argument("--check", metavar="README", help="exit 1 if this file's table is stale")
    args = ap.parse_args(argv)
    if args.run:
        run_sources()
    block = render(load())
    if args.write:
        path = Path(args.write)
        path.write_text(replace_block(path.read_text(), block))
    elif args.check:
        text = Path(args.check).read_text()
        if replace_block(text, block) != text:
            print(f"{args.check}: the results table differs from docs/results/", file=sys.stderr)
            return 1
    else:
        print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())

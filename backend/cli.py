"""The `hamr` command line. Subcommands are added as the backend grows (DESIGN.md: predict, video,
serve, blend). Heavy imports happen inside each subcommand so `hamr --help` stays fast."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_demo(args: argparse.Namespace) -> int:
    from backend.demo import main as demo_main

    demo_main(["--out", args.out])
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from backend.hand_model.model import hand_model_id, open_hand_metadata

    info = {"hand_model": hand_model_id(args.hand_model, args.mano_dir)}
    if args.hand_model == "open":
        meta = open_hand_metadata()
        info.update(mesh=meta["mesh"], wrist_to_middle_tip_m=meta["wrist_to_middle_tip_m"])
    print(json.dumps(info, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hamr", description="HAMR hand mesh recovery backend")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="render the embedded hand model in several poses and shapes")
    p.add_argument("--out", default="docs/images", help="output folder")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("info", help="print the hand model in use")
    p.add_argument("--hand-model", choices=("open", "mano"), default="open")
    p.add_argument("--mano-dir", default=None, help="folder with MANO_RIGHT.pkl / MANO_LEFT.pkl")
    p.set_defaults(func=_cmd_info)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"hamr: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

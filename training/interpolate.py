"""Weight-space interpolation of two checkpoints of the same network (WiSE-FT, Wortsman et al.
2022): `python -m training.interpolate BASE FINETUNED --alpha A --out OUT.safetensors`.

OUT's weights are (1 - A) * BASE + A * FINETUNED, every floating-point tensor (BatchNorm's
running statistics too; integer buffers such as BatchNorm's batch counters come from FINETUNED).
A fine-tuned network and the network it started from usually lie in one basin, so the line
between them trades the new domain's gains against the old domain's scores smoothly; evaluate a
few A with `training.compare`. OUT's header keeps FINETUNED's metadata (its training config and
its init_from chain, which names BASE) and adds `interpolation`: {"base", "finetuned", "alpha"}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from backend.hand_model.model import hand_model_id
from backend.network.checkpoint import load_checkpoint, save_checkpoint


def interpolate(base: str, finetuned: str, alpha: float, out: str | Path) -> Path:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    net_a, _ = load_checkpoint(base, "cpu")
    net_b, info_b = load_checkpoint(finetuned, "cpu")
    if net_a.config != net_b.config:
        raise ValueError(f"{base} and {finetuned} are different networks")
    sa, sb = net_a.state_dict(), net_b.state_dict()
    mixed = {
        k: torch.lerp(sa[k], v, alpha) if v.is_floating_point() else v.clone()
        for k, v in sb.items()
    }
    net_b.load_state_dict(mixed)
    meta = dict(info_b.get("metadata", {}))
    meta["interpolation"] = {"base": str(base), "finetuned": str(finetuned), "alpha": alpha}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, net_b, hand_model_id=hand_model_id(net_b.config.hand_model), metadata=meta)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("finetuned")
    ap.add_argument("--alpha", type=float, required=True, help="0: BASE, 1: FINETUNED")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        out = interpolate(args.base, args.finetuned, args.alpha, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(out), "alpha": args.alpha}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

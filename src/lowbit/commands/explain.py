"""``lowbit explain MODEL TENSOR --scheme S [...]``: one tensor, from the bits up."""

from __future__ import annotations

import argparse
from pathlib import Path


def _weight(text: str) -> tuple[int, int]:
    """``ROW,COL`` as a pair of ints."""
    try:
        row, col = (int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--weight takes ROW,COL (two integers), got {text!r}"
                                         ) from None
    return row, col


def cmd_explain(args: argparse.Namespace) -> int:
    """Explain the tensor, write the page and figures, print the summary."""
    from lowbit.explainer import explain

    out = Path(args.output)
    exp = explain(args.model, args.tensor, args.scheme, out=out, weight=args.weight,
                  sensitivity=args.sensitivity)
    print(exp.summary())
    print(f"wrote {exp.files['page']} ({len(exp.files) - 1} figures and one checkpoint per "
          f"scheme under {out})")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``explain``."""
    p = sub.add_parser("explain", help="show how one tensor is quantized: the format's bits, the "
                                       "grid over the weights, the error per block, one weight "
                                       "followed into the checkpoint's bytes")
    p.add_argument("model", help="built-in name, Hugging Face folder, .gguf file or lowbit "
                                 "checkpoint")
    p.add_argument("tensor", help="tensor name or pattern (model.layers.0.mlp.down_proj, "
                                  "'*.0.*down*'); candidates are listed when it is ambiguous")
    p.add_argument("--scheme", action="append", required=True, metavar="S",
                   help="scheme to show (repeat for several), e.g. int4-sym-g32")
    p.add_argument("-o", "--output", default="explain", metavar="DIR",
                   help="folder for explain.html, the PNGs and the checkpoints (default "
                        "./explain)")
    p.add_argument("--weight", type=_weight, metavar="ROW,COL",
                   help="the weight to follow bit for bit (default: the largest error in the "
                        "worst block)")
    p.add_argument("--sensitivity", action="store_true",
                   help="look the tensor's sensitivity rank up in the budget's cache (loads the "
                        "model; measures nothing)")
    p.set_defaults(handler=cmd_explain)

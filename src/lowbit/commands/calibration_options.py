"""The calibration options ``lowbit quantize`` and ``lowbit sweep`` share (``--calib FILE...``,
``--calib-tokens N``), and the :class:`~lowbit.calibration.Calibration` they ask for.

The older ``--calibration-text``, ``--calibration-length`` and ``--calibration-batch`` are
aliases of ``--calib``, ``--calib-length`` and ``--calib-batch``; ``--calibration-windows N``
still works and means ``--calib-tokens`` N times the window length.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_calibration_arguments(p: argparse.ArgumentParser) -> None:
    """Add the calibration option group to a command's parser."""
    from lowbit.calibration.windows import DEFAULT_BATCH, DEFAULT_LENGTH, DEFAULT_TOKENS
    from lowbit.data import DEFAULT_CALIBRATION_TEXT

    g = p.add_argument_group("calibration (data-aware methods only)")
    g.add_argument("--calib", "--calibration-text", nargs="+", metavar="FILE", dest="calib",
                   help="calibration text(s): names under the data folder's text/ or paths; "
                        "tokens are drawn from all of them, an equal share each (default "
                        f"{DEFAULT_CALIBRATION_TEXT}, which is not an evaluation text)")
    g.add_argument("--calib-tokens", type=int, metavar="N",
                   help=f"total calibration tokens (default {DEFAULT_TOKENS})")
    g.add_argument("--calib-length", "--calibration-length", type=int, default=DEFAULT_LENGTH,
                   metavar="TOKENS", dest="calib_length",
                   help=f"tokens per window (default {DEFAULT_LENGTH})")
    g.add_argument("--calib-batch", "--calibration-batch", type=int, default=DEFAULT_BATCH,
                   metavar="N", dest="calib_batch",
                   help=f"windows run through the model at once (default {DEFAULT_BATCH})")
    g.add_argument("--calibration-windows", type=int, metavar="N",
                   help="older form of --calib-tokens: N windows of --calib-length tokens")


def calib_tokens(args: argparse.Namespace) -> int:
    """The total calibration tokens the options ask for."""
    from lowbit.calibration.windows import DEFAULT_TOKENS

    if args.calibration_windows is not None:
        if args.calib_tokens is not None:
            raise ValueError("give --calib-tokens or --calibration-windows, not both")
        return args.calibration_windows * args.calib_length
    return DEFAULT_TOKENS if args.calib_tokens is None else args.calib_tokens


def calibration_from_args(args: argparse.Namespace, tokenizer: Any, *, what: str) -> Any:
    """The Calibration the options ask for, tokenized with ``tokenizer``; ``what`` (the model,
    the method) names what needs it when the tokenizer is missing."""
    from lowbit.calibration import Calibration
    from lowbit.data import DEFAULT_CALIBRATION_TEXT

    if tokenizer is None:
        raise ValueError(f"{what} needs a tokenizer to tokenize its calibration text, and the "
                         "model has none")
    return Calibration.from_texts(tokenizer, args.calib or [DEFAULT_CALIBRATION_TEXT],
                                  tokens=calib_tokens(args), length=args.calib_length,
                                  batch_size=args.calib_batch)

"""The ``lowbit`` command: parses options, calls the library, prints. No logic of its own."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def _cmd_formats(args: argparse.Namespace) -> int:
    from lowbit.formats.describe import describe_all
    from lowbit.report.table import render_table

    rows = describe_all()
    print(render_table(list(rows[0]), [list(r.values()) for r in rows], markdown=args.markdown))
    return 0


def _cmd_schemes(args: argparse.Namespace) -> int:
    import torch

    from lowbit import quantize_tensor
    from lowbit.core.scheme import Scheme
    from lowbit.report.table import render_table

    rows = []
    w = torch.zeros(256, 4096)  # bits per weight depend only on the shape
    for name in args.names:
        s = Scheme.parse(name)
        qt = quantize_tensor(w, s)
        rows.append([str(s), s.canonical(), s.ggml_type or s.element_format.name, s.granularity,
                     s.block_size or "", s.scale_format, round(qt.bits_per_weight, 4)])
    headers = ["scheme", "canonical", "element", "granularity", "block", "scale",
               "bits/weight (256x4096)"]
    acts = [Scheme.parse(n).activations for n in args.names]
    if any(acts):  # W8A8 names: what happens to the activations (weight-only: float)
        headers.append("activations")
        for row, act in zip(rows, acts):
            row.append("float" if act is None else "-".join(act.tokens()))
    print(render_table(headers, rows, markdown=args.markdown))
    return 0


COMMON_SCHEMES = [
    "int8-sym-channel", "int8-sym-g32", "int4-asym-g128", "int4-sym-g32", "int2-asym-g64",
    "nf4-g64", "nf4-g64-dq", "fp8-e4m3-channel", "fp8-e5m2-tensor", "fp4-e2m1-g32",
    "mxfp8", "mxfp6", "mxfp4", "nvfp4",
]


def _cmd_demo(args: argparse.Namespace) -> int:
    from lowbit.commands.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowbit", description="Quantize LLM weights and measure what each format costs."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("formats", help="table of every number format")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.set_defaults(handler=_cmd_formats)

    p = sub.add_parser("schemes", help="parse scheme names and show their bits per weight")
    p.add_argument("names", nargs="*", default=COMMON_SCHEMES, help="scheme names")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.set_defaults(handler=_cmd_schemes)

    from lowbit.commands import bench as bench_commands
    from lowbit.commands import cache as cache_commands
    from lowbit.commands import evaluate as eval_commands
    from lowbit.commands import explain as explain_commands
    from lowbit.commands import export as export_commands
    from lowbit.commands import finetune as finetune_commands
    from lowbit.commands import imatrix as imatrix_commands
    from lowbit.commands import models as model_commands
    from lowbit.commands import sweep as sweep_commands

    model_commands.add_parsers(sub)
    eval_commands.add_parsers(sub)
    sweep_commands.add_parsers(sub)
    export_commands.add_parsers(sub)
    imatrix_commands.add_parsers(sub)
    cache_commands.add_parsers(sub)
    explain_commands.add_parsers(sub)
    bench_commands.add_parsers(sub)
    finetune_commands.add_parsers(sub)

    from lowbit.commands.demo import add_arguments as add_demo_arguments

    p = sub.add_parser("demo", help='the experiment of the article "Quantization from the ground '
                                    'up" (ngrok blog, 2026) on Gemma-3-270M: table and report')
    add_demo_arguments(p)
    p.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from lowbit.storage.lock import OutputLockedError

    try:
        return args.handler(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError,
            ModuleNotFoundError, OutputLockedError) as err:
        print(f"lowbit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, read-only, permission, not a directory, ...
        print(f"lowbit {args.command}: error: {describe_os_error(err, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lowbit {args.command}: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130  # the shell's code for a command ended by SIGINT


def _resume_hint(args: argparse.Namespace) -> str:
    """What an interrupted command kept: a sweep keeps its finished rows."""
    if args.command == "sweep":
        return (f"; the rows finished so far are kept in {args.output}/results.jsonl: rerun "
                "the same command to resume")
    return ""


def describe_os_error(err: OSError, args: argparse.Namespace) -> str:
    """One line naming the path and the cause; an error that names no path (a failed write)
    is told against the command's output."""
    import errno

    cause = err.strerror or str(err)
    if err.errno in errno.errorcode:
        cause += f" ({errno.errorcode[err.errno]})"
    path = err.filename or getattr(args, "output", None) or getattr(args, "json", None)
    if path is None:
        return cause
    return f"{path}{f' -> {err.filename2}' if err.filename2 else ''}: {cause}"


if __name__ == "__main__":
    sys.exit(main())

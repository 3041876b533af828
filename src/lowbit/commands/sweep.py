"""``lowbit sweep``: quantize and evaluate a model under each (method, scheme) pair; results,
plots, report."""

from __future__ import annotations

import argparse
import sys


def cmd_sweep(args: argparse.Namespace) -> int:
    from lowbit.commands.budget import candidates
    from lowbit.commands.calibration_options import calib_tokens, calibration_from_args
    from lowbit.commands.evaluate import check_data, settings_from_args
    from lowbit.commands.executor_options import executor_from_args
    from lowbit.report.sweep import run_sweep

    schemes = _names(args.schemes or [])
    budgets = _names(args.budgets or [])
    methods = _names(args.methods or ["rtn"])
    if not schemes and not budgets:
        raise ValueError("--schemes: give at least one scheme name (or --budgets)")
    if not methods:
        raise ValueError("--methods: give at least one method name")
    settings = settings_from_args(args)
    check_data(settings)
    calib_tokens(args)  # conflicting calibration options fail before any work
    executor = executor_from_args(args)
    if executor.name != "inprocess" and settings.speed:
        print("lowbit sweep: note: with --executor ray several rows can run at once on one "
              "machine, and the speed columns (tok/s) then measure a shared machine; add "
              "--no-speed and measure speed apart (lowbit bench)", file=sys.stderr)

    def calibration(tokenizer):
        return calibration_from_args(args, tokenizer, what="a data-aware method")

    result = run_sweep(args.model, schemes, args.output, settings=settings,
                       baseline_rows=not args.no_baseline_rows, cache_logits=not args.no_cache,
                       force=args.force, progress=not args.no_progress, strict=args.strict,
                       methods=methods, calibration=calibration, budgets=budgets,
                       candidates=candidates(args) if budgets else None, executor=executor)
    sys.stdout.write(result.results_md.read_text(encoding="utf-8"))
    print(f"\n{len(result.ran)} rows evaluated now, {len(result.records) - len(result.ran)} "
          f"from earlier runs, in {result.seconds:.0f} s")
    print(f"report: {result.report_html.resolve()}")
    for rec in result.failed:
        print(f"FAILED {rec['name']} after {rec.get('attempts')} attempts: {rec.get('error')} "
              f"(log: {args.output}/jobs/)", file=sys.stderr)
    return 1 if result.failed else 0


def _names(items: list[str]) -> list[str]:
    """Comma-separated, repeatable option values as one list of names."""
    return [s.strip() for item in items for s in item.split(",") if s.strip()]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from lowbit.commands.calibration_options import add_calibration_arguments
    from lowbit.commands.evaluate import add_eval_options
    from lowbit.commands.executor_options import add_executor_arguments

    p = sub.add_parser("sweep", help="quantize and evaluate a model under each of many schemes "
                                     "(and methods)")
    p.add_argument("model", help="Hugging Face folder, .gguf or built-in name")
    p.add_argument("--schemes", action="append", metavar="LIST",
                   help="comma-separated scheme names (repeatable)")
    p.add_argument("--budgets", action="append", metavar="LIST",
                   help="comma-separated budgets, each a budgeted plan row beside the schemes: "
                        "whole-model bits per parameter (4.5) or a size (90MB); the plan "
                        "minimises measured sensitivity (cached) over --candidates, rtn")
    p.add_argument("--candidates", metavar="LIST",
                   help="with --budgets: schemes a plan chooses from (default: q2_k..q6_k,"
                        "q8_0; 'any' adds lowbit's own schemes)")
    p.add_argument("--methods", action="append", metavar="LIST",
                   help="comma-separated method names, e.g. rtn,gptq,awq,hqq (repeatable; "
                        "default rtn): every (method, scheme) pair is a row")
    p.add_argument("-o", "--output", required=True, help="output folder (a rerun resumes)")
    add_eval_options(p)
    p.add_argument("--no-baseline-rows", action="store_true",
                   help="skip the float baseline and fp16-kept-tensors rows")
    p.add_argument("--no-cache", action="store_true",
                   help="rerun the baseline beside each scheme instead of storing its logits")
    p.add_argument("--force", action="store_true", help="discard earlier results in the folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--strict", action="store_true",
                   help="stop when a scale format saturates or underflows on some block of a "
                        "row (rows already finished are kept), instead of warning")
    add_calibration_arguments(p)
    add_executor_arguments(p)
    p.set_defaults(handler=cmd_sweep)

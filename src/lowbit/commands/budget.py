"""``lowbit quantize --target-bpw / --target-size``: measure sensitivity, allocate, quantize."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_budget_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("mixed precision to a budget (instead of --scheme/--preset)")
    g.add_argument("--target-bpw", type=float, metavar="BITS",
                   help="whole-model bits per parameter, e.g. 4.5")
    g.add_argument("--target-size", metavar="SIZE",
                   help="whole-model size, e.g. 90MB: the tensors' bytes as a checkpoint stores "
                        "them (no JSON/config/tokenizer files) unless --target-file gguf")
    g.add_argument("--target-file", choices=["tensors", "gguf"], default="tensors",
                   help="what the target measures: tensors (default: the model's tensor bytes) "
                        "or gguf (the size of the file `lowbit export` writes: header, "
                        "metadata, tokenizer, F32 norms and padding included; a model the GGUF "
                        "exporter supports)")
    g.add_argument("--candidates", metavar="LIST",
                   help="comma-separated schemes to choose from (default: q2_k..q6_k,q8_0; "
                        "'any' adds lowbit's own schemes)")
    g.add_argument("--sensitivity", choices=["kl", "proxy"], default="kl",
                   help="kl: measured KL per tensor and scheme (default, cached); proxy: "
                        "importance-weighted weight error (one forward pass, much cheaper)")
    g.add_argument("--sensitivity-anchors", type=_anchors, default="1", metavar="N|all",
                   help="with --sensitivity kl: schemes measured per tensor (default 1, the "
                        "middle candidate by size); the others are placed by the proxy's "
                        "ratio within the tensor. 'all' measures every pair (slower, exact)")
    g.add_argument("--refine-swaps", type=int, default=0, metavar="N",
                   help="interactions: measure the whole plan's KL and N budget-neutral swaps "
                        "per round (2 rounds), keeping a swap that measures better (default 0: "
                        "off; the allocation takes KL as additive)")
    g.add_argument("--sensitivity-report", metavar="STEM",
                   help="also write the sensitivity table STEM.md and heatmap STEM.png")


def _anchors(text: str) -> int | None:
    if text.strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--sensitivity-anchors {text!r}: give a count of at "
                                         "least 1, or 'all'")
    return n


def wants_budget(args: argparse.Namespace) -> bool:
    return args.target_bpw is not None or args.target_size is not None


def candidates(args: argparse.Namespace) -> list[str]:
    from lowbit.budget.plan import ANY_CANDIDATES, GGML_CANDIDATES
    from lowbit.core.scheme import Scheme

    if not args.candidates:
        return list(GGML_CANDIDATES)
    if args.candidates.strip().lower() == "any":
        return list(ANY_CANDIDATES)
    names = [c.strip() for c in args.candidates.split(",") if c.strip()]
    for c in names:
        Scheme.parse(c)
    return names


def quantize_to_budget(args: argparse.Namespace, out: Path, method, keep):
    """Load the model, measure (or read cached) sensitivity, allocate, quantize (with the
    method's data: --imatrix or calibration text), save; (report, calibration or None)."""
    from lowbit.budget.plan import budget_plan, parse_size
    from lowbit.budget.sensitivity import default_calibration, measure_sensitivity
    from lowbit.models import load_model
    from lowbit.pipeline.inmemory import quantize
    from lowbit.storage.checkpoint import save

    if args.exclude or args.override or args.embedding:
        raise ValueError("a budget sets every tensor's scheme: --exclude, --override and "
                         "--embedding do not apply")
    target = None if args.target_size is None else parse_size(args.target_size)
    model, tokenizer = load_model(args.source)
    if tokenizer is None:
        raise ValueError(f"{args.source} has no tokenizer: sensitivity needs calibration text")
    # --calib names the texts; the window count is sensitivity's own small default unless
    # --calib-tokens asks for more (every unit x candidate runs all of them)
    cal = default_calibration(tokenizer, args.calib, args.calib_tokens)
    if args.sensitivity == "proxy":
        from lowbit.budget.proxy import measure_proxy

        sens = measure_proxy(model, cal, candidates(args))
    else:
        from lowbit.commands.executor_options import executor_from_args

        sens = measure_sensitivity(model, cal, candidates(args),
                                   anchors=args.sensitivity_anchors,
                                   executor=executor_from_args(args))
    fixed = _gguf_fixed(model, sens, keep) if args.target_file == "gguf" else None
    plan = budget_plan(model, sens, target_bytes=target, target_bpw=args.target_bpw,
                       keep_dtype=keep, fixed=fixed)
    if args.refine_swaps > 0:
        from lowbit.budget.refine import refine_plan

        plan = refine_plan(model, cal, sens, plan, swaps=args.refine_swaps)
        r = plan.details["refine"]
        print(f"refine           measured plan KL {r['measured_kl']:.5f} (summed "
              f"{plan.details['summed_kl']:.5f}); {r['tried']} swaps measured, "
              f"{len(r['applied'])} applied; KL now {r['final_kl']:.5f}")
    what = ("GGUF file bytes" if fixed is not None
            else "tensor bytes as a checkpoint stores them")
    print(f"budget           {plan.details['budget_bytes']} {what}; plan "
          f"{plan.details['predicted_bytes']} bytes ({plan.details['bits_per_param']:.4f} "
          f"bits/param), {sens.measured} sensitivity runs measured now, "
          f"{sens.pairs_measured() - sens.measured} cached, "
          f"{sum(map(len, sens.placed.values()))} placed by the proxy")
    if args.sensitivity_report:
        from lowbit.budget.plan import choice_of
        from lowbit.budget.report import write_sensitivity_report

        for path in write_sensitivity_report(sens, args.sensitivity_report,
                                             choice_of(plan, sens)):
            print(f"sensitivity      {path}")
    data = _method_data(args, method, tokenizer)
    report = quantize(model, plan, method=method, keep_dtype=keep, strict=args.strict, **data)
    save(model, out, tokenizer=tokenizer, force=args.force,
         layer_info={**report.layers, **report.embeddings})
    return report, data.get("calibration")


def budget_method(args: argparse.Namespace, method):
    """The method a budget quantizes with: ``--imatrix FILE`` with the default ``rtn`` means
    ``rtn-imatrix`` (the only use of an importance matrix; ggml types get llama.cpp's weighted
    quantizer), anything else as given."""
    from lowbit.methods import get_method

    if args.imatrix and method.name == "rtn":
        args.method = "rtn-imatrix"
        return get_method("rtn-imatrix").with_option_strings(args.method_option or [])
    return method


def _method_data(args: argparse.Namespace, method, tokenizer) -> dict:
    """What a data-aware method quantizes the plan from: the --imatrix file, or calibration
    text (--calib, the quantize default of --calib-tokens: not sensitivity's small set)."""
    if args.imatrix:
        return {"imatrix": args.imatrix}
    if not method.data_aware:
        return {}
    from lowbit.commands.calibration_options import calibration_from_args

    return {"calibration": calibration_from_args(args, tokenizer,
                                                 what=f"method {method.name!r}")}


def _gguf_fixed(model, sens, keep) -> int:
    """The GGUF export's bytes beyond the units' quantized data (see ``export.gguf_size``)."""
    from lowbit.export.gguf_size import gguf_overhead

    modules = [m for unit in sens.units.values() for m in unit]
    return gguf_overhead(model, modules, keep)

"""``lowbit quantize``, ``lowbit inspect`` and ``lowbit generate``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{nbytes:.0f} B"
        nbytes /= 1000
    raise AssertionError


def _quantize_to(args: argparse.Namespace, source, out: Path, overrides: dict[str, str]):
    """Run the quantization the options ask for: the streaming path for a data-free method on a
    safetensors folder, else the loaded model (with calibration, or the --imatrix file, for a
    data-aware method). Returns the report and the calibration (None without one)."""
    from lowbit.commands.calibration_options import calibration_from_args
    from lowbit.methods import get_method
    from lowbit.models import load_model
    from lowbit.pipeline.inmemory import quantize
    from lowbit.pipeline.streaming import quantize_folder
    from lowbit.storage.checkpoint import parse_dtype, save

    method = get_method(args.method).with_option_strings(args.method_option or [])
    keep = parse_dtype(args.keep_dtype)
    common = {"exclude": args.exclude, "overrides": overrides, "keep_dtype": keep,
              "method": method, "strict": args.strict}
    if args.imatrix and args.calib:
        raise ValueError("give --imatrix or --calib, not both: the imatrix file replaces "
                         "running calibration text through the model")
    from lowbit.commands.budget import quantize_to_budget, wants_budget

    if wants_budget(args):
        from lowbit.commands.budget import budget_method

        return quantize_to_budget(args, out, budget_method(args, method), keep)
    if args.preset:
        return _quantize_preset(args, out, method, keep), None
    if source.kind in ("hf", "builtin") and not method.data_aware and not args.imatrix \
            and not args.embedding:
        return quantize_folder(source.path, args.scheme, out, force=args.force,
                               source_info=source.to_dict(), **common), None
    model, tokenizer = load_model(args.source)
    calibration = None
    if method.data_aware and not args.imatrix:
        calibration = calibration_from_args(args, tokenizer, what=f"method {args.method!r}")
    report = quantize(model, args.scheme, calibration=calibration, imatrix=args.imatrix,
                      embedding=args.embedding, **common)
    save(model, out, tokenizer=tokenizer, force=args.force,
         layer_info={**report.layers, **report.embeddings})
    return report, calibration


def _quantize_preset(args: argparse.Namespace, out: Path, method, keep):
    """Quantize by a llama.cpp preset's plan (every tensor its ggml type), in memory."""
    from lowbit.models import load_model
    from lowbit.pipeline.inmemory import quantize
    from lowbit.pipeline.presets import preset_plan
    from lowbit.storage.checkpoint import save

    if args.exclude or args.override or args.embedding:
        raise ValueError("--preset sets every tensor's type: --exclude, --override and "
                         "--embedding do not apply")
    model, tokenizer = load_model(args.source)
    report = quantize(model, preset_plan(model, args.preset), method=method, keep_dtype=keep,
                      strict=args.strict)
    save(model, out, tokenizer=tokenizer, force=args.force,
         layer_info={**report.layers, **report.embeddings})
    return report


def cmd_quantize(args: argparse.Namespace) -> int:
    from lowbit.eval.artifact import on_grid
    from lowbit.models import resolve_source
    from lowbit.pipeline.plan import parse_overrides
    from lowbit.storage.atomic import check_output_path
    from lowbit.storage.lock import output_lock

    _check_scheme_or_preset(args)
    overrides = parse_overrides(args.override or [])
    out = Path(args.output)
    check_output_path(out)  # before the lock, whose file sits beside the output
    t0 = time.perf_counter()
    with output_lock(out):  # the whole run: a second process on this output fails at once
        if out.exists() and not args.force:
            raise FileExistsError(f"{out} already exists; pass --force to replace it")
        source = resolve_source(args.source)
        report, calibration = _quantize_to(args, source, out, overrides)
    seconds = time.perf_counter() - t0
    float_bytes = report.params * 2
    disk = sum(f.stat().st_size for f in out.iterdir() if f.suffix == ".safetensors")
    print(f"source           {source.name} ({source.kind}, sha256 {source.sha256[:12]}...)")
    print(f"scheme           {args.scheme or args.preset or 'budgeted plan'}"
          + (f"  overrides {overrides}" if overrides else ""))
    from lowbit.methods import get_method

    settings = get_method(args.method).with_option_strings(args.method_option or []).settings()
    print(f"method           {args.method}" + "".join(f"  {k}={v}" for k, v in settings.items()))
    if calibration is not None:
        print(f"calibration      {calibration.source}")
    if args.imatrix:
        print(f"imatrix          {args.imatrix}")
    print(f"quantized layers {len(report.layers)} ({report.params / 1e6:.1f} M weights)")
    print(f"fp16 size        {_human(float_bytes)} (quantized layers)")
    print(f"quantized size   {_human(report.nbytes)} "
          f"({report.nbytes / float_bytes:.1%} of fp16)")
    print(f"bits per weight  {report.nbytes * 8 / report.params:.4f}")
    print(f"mean rel. error  {report.mean_rel_error:.4f} (relative L2 of each layer's weight)")
    grid = sum(on_grid(r.rel_error) for r in report.layers.values())
    if grid:
        print(f"note             {grid} layer(s) came back within 0.1% (relative L2): the "
              "source already lies on this scheme's grid (an artifact, not a finding)")
    if report.warnings:
        print(f"range warnings   {len(report.warnings)} (recorded in lowbit.json): "
              + "; ".join(report.warnings[:3]) + (" ..." if len(report.warnings) > 3 else ""))
    print(f"checkpoint       {out} ({_human(disk)} of tensors on disk)")
    _print_whole_model(out)
    print(f"time             {seconds:.1f} s")
    return 0


def _check_scheme_or_preset(args: argparse.Namespace) -> None:
    from lowbit.commands.budget import wants_budget
    from lowbit.core.scheme import Scheme
    from lowbit.pipeline.presets import PLAN_PRESETS, is_preset

    given = [args.scheme is not None, args.preset is not None, wants_budget(args)]
    if sum(given) != 1 or (args.target_bpw is not None and args.target_size is not None):
        raise ValueError("give one of --scheme (one scheme for every layer), --preset "
                         f"(llama.cpp's mix: {', '.join(PLAN_PRESETS)}), --target-bpw or "
                         "--target-size (a budgeted mix)")
    if wants_budget(args):
        return
    if args.scheme is not None:
        Scheme.parse(args.scheme)
    elif not is_preset(args.preset):
        raise ValueError(f"--preset {args.preset!r}: not a llama.cpp preset; choose one of "
                         f"{', '.join(PLAN_PRESETS)}")


def _print_whole_model(out: Path) -> None:
    """The whole model's stored bytes and bits per parameter (embeddings and head included)."""
    from lowbit.eval.layers import model_size
    from lowbit.storage.checkpoint import load

    model, _ = load(out)
    _whole_model_line(*model_size(model))


def _whole_model_line(nbytes: int, params: int) -> None:
    """Print the whole model's bytes and bits per parameter, as quantize and inspect show it."""
    print(f"whole model      {_human(nbytes)}, {nbytes * 8 / params:.4f} bits per parameter "
          f"({params / 1e6:.1f} M parameters, embeddings and head included, tied ones once)")


def _print_problems(command: str, checkpoint: str, problems: list[str]) -> None:
    print(f"lowbit {command}: {checkpoint} is broken: {len(problems)} problem(s)",
          file=sys.stderr)
    for p in problems:
        print(f"  - {p}", file=sys.stderr)


def cmd_verify(args: argparse.Namespace) -> int:
    """Every check, hashes included; exit 0 if sound, 1 with the list of problems if not."""
    from lowbit.storage.integrity import check

    verdict = check(args.checkpoint, hashes=True)
    for note in verdict.notes:
        print(f"note: {note}")
    if not verdict.sound:
        _print_problems("verify", args.checkpoint, verdict.problems)
        return 1
    print(f"{args.checkpoint}: sound (" + ("structure checked, no hashes to compare"
                                           if verdict.notes else
                                           "every file matches its sha256; structure checked")
          + ")")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from lowbit.storage.integrity import check

    verdict = check(args.checkpoint, hashes=False)  # structure only: headers, never data
    if not verdict.sound:
        _print_problems("inspect", args.checkpoint, verdict.problems)
        return 1
    _print_layer_table(args)
    return 0


def _print_layer_table(args: argparse.Namespace) -> None:
    from lowbit.report.table import render_table
    from lowbit.storage.checkpoint import read_metadata

    meta = read_metadata(args.checkpoint)
    rows = []
    for name, info in meta["layers"].items():
        err = info.get("rel_error")
        rows.append([name, info["scheme"]["name"], "x".join(map(str, info["shape"])),
                     info["nbytes"], round(info["bits_per_weight"], 4),
                     "" if err is None else (f"{err:.5f}" + (" (exact)" if info.get("exact")
                                                             else ""))])
    for name, info in (meta.get("embeddings") or {}).items():
        tied = f" (tied to {info['tied_to']}: stored once)" if info.get("tied_to") else ""
        rows.append([f"{name} [embedding]{tied}", info["scheme"]["name"],
                     "x".join(map(str, info["shape"])), info["nbytes"],
                     round(info["bits_per_weight"], 4), ""])
    print(render_table(["layer", "scheme", "shape", "bytes", "bits/weight", "rel. error"],
                       rows, markdown=args.markdown))
    if meta.get("plan"):
        plan = meta["plan"]
        counts = {}
        for s in [*plan["layers"].values(), plan.get("embedding")]:
            if s is not None:
                counts[s] = counts.get(s, 0) + 1
        print(f"\nplan {plan['name']}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
              + "".join(f"; {k} {v}" for k, v in (plan.get("details") or {}).items()))
    total_w = sum(i["shape"][0] * i["shape"][1] for i in meta["layers"].values())
    total_b = sum(i["nbytes"] for i in meta["layers"].values())
    src = meta.get("source") or {}
    print(f"\n{len(meta['layers'])} quantized layers, {total_w / 1e6:.1f} M weights, "
          f"{_human(total_b)}, {total_b * 8 / total_w:.4f} bits/weight; kept tensors in "
          f"{meta['keep_dtype']}; source {src.get('name', '?')} "
          f"(sha256 {str(src.get('sha256', '?'))[:12]}...)")
    from lowbit.eval.layers import checkpoint_model_size

    _whole_model_line(*checkpoint_model_size(args.checkpoint))


def cmd_generate(args: argparse.Namespace) -> int:
    import lowbit

    model, tokenizer = lowbit.load_model(args.model, verify=not args.no_verify)
    if tokenizer is None:
        raise ValueError(f"{args.model} has no tokenizer files")

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    sys.stdout.write(args.prompt)
    lowbit.generate(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                    on_text=show)
    sys.stdout.write("\n")
    return 0


def _add_method_arguments(p: argparse.ArgumentParser) -> None:
    from lowbit.commands.calibration_options import add_calibration_arguments
    from lowbit.methods import available_methods

    p.add_argument("--method", default="rtn", choices=available_methods(),
                   help="how codes are chosen (default rtn). A data-aware method runs the "
                        "calibration text through the loaded model block by block; a data-free "
                        "one streams a safetensors folder tensor by tensor")
    p.add_argument("--method-option", action="append", metavar="KEY=VALUE",
                   help="an option of the method, e.g. damp=0.02 or actorder=true for gptq, "
                        "refine_scale=true or iters=40 for hqq (repeatable)")
    add_calibration_arguments(p)
    p.add_argument("--imatrix", metavar="FILE",
                   help="llama.cpp importance matrix (llama-imatrix -o FILE, .dat) to read each "
                        "layer's x2_mean from instead of calibrating; for methods that need "
                        "only that (rtn-imatrix; with --target-size/--target-bpw the default "
                        "method becomes rtn-imatrix)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="quantize a model into a lowbit checkpoint")
    p.add_argument("source", help="Hugging Face folder, .gguf file or built-in name "
                                  "(smollm2-135m, gemma-3-270m)")
    p.add_argument("--scheme", help="e.g. int4-asym-g128 or q4_k (lowbit schemes)")
    p.add_argument("--preset", help="instead of --scheme: llama.cpp's per-tensor mix, e.g. "
                                    "q4_k_m (a plan of ggml types; exports to GGUF as is)")
    p.add_argument("-o", "--output", required=True, help="checkpoint folder to write")
    p.add_argument("--exclude", action="append", metavar="PATTERN",
                   help="keep layers matching this regular expression in float "
                        "(default: lm_head; repeatable)")
    p.add_argument("--override", action="append", metavar="PATTERN=SCHEME",
                   help="another scheme for layers matching PATTERN (repeatable)")
    p.add_argument("--embedding", metavar="SCHEME",
                   help="quantize the input embedding too (a head tied to it takes the same "
                        "scheme and stays tied, stored once)")
    p.add_argument("--keep-dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                   help="dtype of the tensors left unquantized (default float16)")
    p.add_argument("--force", action="store_true", help="replace an existing checkpoint")
    p.add_argument("--strict", action="store_true",
                   help="fail (write nothing) when a scale format saturates or underflows on "
                        "some block, instead of warning")
    _add_method_arguments(p)
    from lowbit.commands.budget import add_budget_arguments

    add_budget_arguments(p)
    from lowbit.commands.executor_options import add_executor_arguments

    add_executor_arguments(p)  # where --target-*'s sensitivity units run
    p.set_defaults(handler=cmd_quantize)

    p = sub.add_parser("inspect", help="per-layer table of a lowbit checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--markdown", action="store_true")
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser("verify", help="check a checkpoint: file hashes, shapes, dtypes, every "
                                      "layer's tensors, no path outside the folder")
    p.add_argument("checkpoint")
    p.set_defaults(handler=cmd_verify)

    p = sub.add_parser("generate", help="generate text from a model or a lowbit checkpoint")
    p.add_argument("model", help="checkpoint folder, Hugging Face folder, .gguf or built-in name")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-verify", action="store_true",
                   help="load a checkpoint without checking its file hashes")
    p.set_defaults(handler=cmd_generate)

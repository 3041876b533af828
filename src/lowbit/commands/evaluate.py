"""``lowbit eval``: every figure of one model (or checkpoint) against its baseline, as a table and
optionally as JSON (schema ``lowbit.eval/1``, docs/eval-json.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def settings_from_args(args: argparse.Namespace, defaults: Any = None) -> Any:
    """EvalSettings from the shared evaluation options (None options keep ``defaults``)."""
    from dataclasses import replace

    from lowbit.eval.settings import EvalSettings

    s = defaults or EvalSettings()
    changes: dict[str, Any] = {}
    if args.text:
        changes["texts"] = tuple(args.text)
    if args.choice is not None:
        changes["choice"] = tuple(c for c in args.choice if c)
    for key in ("context", "stride", "max_questions"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    if args.max_tokens is not None:
        changes["max_tokens"] = None if args.max_tokens == 0 else args.max_tokens
    if args.no_speed:
        changes["speed"] = False
    return replace(s, **changes)


def check_data(settings: Any) -> None:
    """Resolve every text and question file before any model is loaded (errors say where)."""
    from lowbit import data

    for name in settings.texts:
        data.read_text(name)  # also refuses a file that is not UTF-8 text, before any model
    for name in settings.choice:
        data.choice_path(name)


def default_baseline(model: str) -> str | None:
    """The unquantized source of a lowbit checkpoint or fine-tune (None for anything else)."""
    from lowbit.storage.checkpoint import is_checkpoint, read_metadata
    from lowbit.training.output import eval_baseline, is_finetune_output

    if is_finetune_output(model):  # a fine-tune: the float model it was trained from
        return eval_baseline(model)
    if not is_checkpoint(model):
        return None
    src = read_metadata(model).get("source") or {}
    if src.get("kind") == "builtin":
        return src["name"]
    path = src.get("path")
    if not path or not Path(path).exists():
        raise ValueError(f"{model}: its source model {path or src.get('name')!r} is not on this "
                         "machine; pass --baseline")
    return path


def warn_trained_on(model: str, settings: Any) -> None:
    """A fine-tune evaluated on files it trained on: say so (stderr) before the run."""
    import sys

    from lowbit.training.output import is_finetune_output, trained_on

    if is_finetune_output(model):
        for line in trained_on(model, settings.texts, settings.choice):
            print(f"warning: {line}", file=sys.stderr)


def cmd_eval(args: argparse.Namespace) -> int:
    import lowbit
    from lowbit.eval.layers import folder_bytes, layer_table
    from lowbit.eval.reference import prepare_reference
    from lowbit.eval.suite import evaluate
    from lowbit.report.results import settings_line, table_cells
    from lowbit.report.table import render_table
    from lowbit.runtimes.onnxruntime_model import is_onnx_folder
    from lowbit.storage.checkpoint import is_checkpoint, read_metadata

    settings = settings_from_args(args)
    check_data(settings)
    warn_trained_on(args.model, settings)
    if args.json:
        from lowbit.storage.atomic import check_output_path

        check_output_path(args.json)  # before the minutes of evaluation, not after
    model, tok = lowbit.load_model(args.model, verify=not args.no_verify)
    if tok is None:
        raise ValueError(f"{args.model} has no tokenizer files")
    base_name = args.baseline or default_baseline(args.model)
    ref = None
    if base_name is not None:
        base, _ = lowbit.load_model(base_name)
        ref = prepare_reference(base, tok, settings)
    layers = layer_table(model, None if ref is None else ref.model)
    onnx = is_onnx_folder(args.model)  # an ORT session: its size is the folder's
    disk = folder_bytes(args.model) if is_checkpoint(args.model) or onnx else None
    if disk is not None and not onnx:  # range warnings recorded when it was quantized
        for name, entry in read_metadata(args.model)["layers"].items():
            if entry.get("warnings") and name in layers:
                layers[name]["warnings"] = list(entry["warnings"])
    rec = evaluate(model, tok, ref, settings, name=Path(args.model).name or args.model,
                   layers=layers, disk_bytes=disk)
    rec["model"] = args.model
    rec["baseline_model"] = base_name
    headers, rows = table_cells([rec])
    keep = [i for i, h in enumerate(headers) if any(r[i] for r in rows)]
    print(render_table([headers[i] for i in keep], [[r[i] for i in keep] for r in rows]))
    for tname, t in rec["texts"].items():
        if t["kind"] == "divergence":
            print(f"{tname}: PPL {t['ppl_quant']:.4f} (baseline {t['ppl_base']:.4f}), KL mean "
                  f"{t['kld_mean']:.4g}, median {t['kld_median']:.4g}, p99 {t['kld_p99']:.4g}, "
                  f"top-1 {t['top1_agreement']:.2%}, {t['n_scored']} tokens")
        else:
            print(f"{tname}: PPL {t['perplexity']:.4f} ± {t['ppl_stderr']:.4f}, "
                  f"{t['n_scored']} tokens")
    print(settings_line([rec]))
    print("baseline: " + (base_name or "none (no KL; pass --baseline)"))
    if args.json:
        from lowbit.report.results import _finite
        from lowbit.storage.atomic import write_text_atomic

        write_text_atomic(args.json, json.dumps(_finite(rec), indent=1, sort_keys=True,
                                                allow_nan=False) + "\n")
        print(f"json: {args.json}")
    return 0


def add_eval_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``lowbit eval`` and ``lowbit sweep``."""
    p.add_argument("--text", action="append", metavar="FILE",
                   help="evaluation text (a path, or a name under the data folder's text/); "
                        "repeatable; default sotu-2000-2015.txt and moby-dick-ch061-100.txt")
    p.add_argument("--choice", action="append", metavar="FILE",
                   help="multiple-choice JSONL file (path or name under choice/); repeatable; "
                        "default general_knowledge.jsonl; --choice '' for none")
    p.add_argument("--context", type=int, help="window length in tokens (default 256)")
    p.add_argument("--stride", type=int, help="sliding windows with this stride (default: "
                                              "llama.cpp's disjoint windows, second half scored)")
    p.add_argument("--max-tokens", type=int,
                   help="tokens of each text to use, BOS included (default 1024; 0 = all)")
    p.add_argument("--max-questions", type=int, help="questions per file (default all)")
    p.add_argument("--no-speed", action="store_true", help="skip prefill/decode speed")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="perplexity, KL, choice accuracy, size and speed of a model")
    p.add_argument("model", help="lowbit checkpoint, Hugging Face folder, .gguf, built-in name "
                                 "or ONNX model folder (run in ONNX Runtime)")
    p.add_argument("--baseline", help="model to compare with (default: a checkpoint's source)")
    add_eval_options(p)
    p.add_argument("--json", metavar="OUT", help="also write every figure to this JSON file")
    p.add_argument("--no-verify", action="store_true",
                   help="load a checkpoint without checking its file hashes")
    p.set_defaults(handler=cmd_eval)

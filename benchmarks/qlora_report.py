"""Markdown for ``benchmarks/qlora.py``'s rows (kept apart so the runner stays short)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from lowbit.storage.atomic import write_text_atomic


def _lock() -> str:
    if os.environ.get("LOWBIT_TIMING_LOCK") == "held":
        return "the run held the timing lock"
    return "the run did not declare that it held the timing lock (LOWBIT_TIMING_LOCK=held)"


def _ci(r: dict) -> str:
    return f"{r['acc']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"


def _dequant(args: Any) -> str:
    mode = getattr(args, "dequant", "recompute")
    return {"recompute": "QLoRA keeps no float weight (`--dequant recompute`, the default "
                         "and least memory): the forward runs each layer's kernel, the "
                         "backward computes `dy @ W` from tiles of rows (cpu-lut4) or from the "
                         "weight dequantized again for the pass.",
            "step": "QLoRA keeps each layer's dequantized weight from the forward to the "
                    "backward of a step (`--dequant step`).",
            "all": "QLoRA keeps every layer's dequantized weight for the whole run "
                   "(`--dequant all`, counted in peak RSS): several times faster on this CPU, "
                   "with the same gradients as the other modes (tests/training), so the "
                   "accuracies hold for them; QLoRA's least memory (`--dequant recompute`) "
                   "against 16-bit LoRA is in `qlora_dequant.md`."}[mode]


def _mb(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}"


def _m(r: dict, key: str) -> float | None:
    return None if r.get(key) is None else r[key] / 1e6


def _claim(rows: list[dict], args: Any) -> list[str]:
    lines = ["| base format | trainable params | steps | wall time (s) | peak RSS (MB) | "
             "peak RSS training (MB) | base weights in memory (MB) | kernel layouts (MB) | "
             "dequantized held (MB) | optimizer state (MB) | first → last loss | "
             "held-out accuracy [95% CI] |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        loss = f"{r['losses'][0]:.3f} → {r['losses'][-1]:.3f}" if r["losses"] else "–"
        wall = f"{r['seconds']:.0f}" if r["steps"] else "–"
        lines.append(f"| {r['label']} | {r['trainable']:,} | {r['steps']} | {wall} | "
                     f"{r['peak_rss_mb']:.0f} | {_mb(r.get('train_peak_rss_mb'))} | "
                     f"{r['weight_bytes'] / 1e6:.0f} | {_mb(_m(r, 'layout_bytes'))} | "
                     f"{r.get('dequant_bytes', 0) / 1e6:.0f} | "
                     f"{r['optimizer_bytes'] / 1e6:.1f} | {loss} | {_ci(r)} |")
    return lines


def _verdict(rows: list[dict]) -> list[str]:
    by = {r["label"]: r for r in rows}
    ref = by.get("bf16")
    if ref is None:
        return []
    out = []
    base = by.get("bf16 (untrained)")
    if base is not None:
        inside = ref["low"] <= base["acc"] <= ref["high"]
        out.append(f"- the untrained model: accuracy {base['acc']:.3f} is "
                   f"{'inside' if inside else 'outside'} that interval too"
                   + (", so these steps and held-out questions do not resolve the fine-tune's "
                      "own gain either: 'within the interval' is a weak test here." if inside
                      else "."))
    for label, r in by.items():
        if label in ("bf16", "bf16 (untrained)"):
            continue
        inside = ref["low"] <= r["acc"] <= ref["high"]
        out.append(f"- {label}: accuracy {r['acc']:.3f} is {'inside' if inside else 'outside'} "
                   f"16-bit LoRA's interval [{ref['low']:.3f}, {ref['high']:.3f}]; peak RSS "
                   f"{r['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x{_train_ratio(r, ref)} and "
                   f"base weights {r['weight_bytes'] / ref['weight_bytes']:.2f}x the 16-bit "
                   "row's.")
    return out


def _train_ratio(r: dict, ref: dict) -> str:
    if r.get("train_peak_rss_mb") is None or ref.get("train_peak_rss_mb") is None:
        return ""
    return f" (while training: {r['train_peak_rss_mb'] / ref['train_peak_rss_mb']:.2f}x)"


def _bnb(rows: list[dict]) -> list[str]:
    r = next((r for r in rows if r.get("bnb")), None)
    if r is None:
        return []
    out = []
    for name, v in r["bnb"].items():
        got = (f"{v['bytes'] / 1e6:.1f} MB of state on {v['device']}" if "bytes" in v
               else v["error"])
        warn = f" (warnings: {'; '.join(v['warnings'])})" if v["warnings"] else ""
        out.append(f"- bitsandbytes `{name}` over the {r['label']} row's adapters: {got}{warn}")
    return out


def _recover(rows: list[dict]) -> list[str]:
    lines = ["| base format | trainable params | steps | wall time (s) | peak RSS (MB) | "
             "KL before | KL after --recover | KL after merge | share of KL removed "
             "(adapters / merged) | PPL before | after | merged | PPL float |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        b, a, m = r["before"], r["after"], r["merged"]
        gain = f"{1 - a['kl'] / b['kl']:.0%} / {1 - m['kl'] / b['kl']:.0%}"
        lines.append(f"| {r['label']} | {r['trainable']:,} | {r['steps']} | {r['seconds']:.0f} "
                     f"| {r['peak_rss_mb']:.0f} | {b['kl']:.4f} | {a['kl']:.4f} | "
                     f"{m['kl']:.4f} | {gain} | {b['ppl']:.3f} | {a['ppl']:.3f} | "
                     f"{m['ppl']:.3f} | {b['ppl_base']:.3f} |")
    return lines


def write_report(out: Path, rows: dict[str, list[dict]], args: Any) -> None:
    text = ["# QLoRA on lowbit formats, and recovery (SmolLM2-135M, CPU)", "",
            f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, 2 cores shared "
            "with other jobs (wall times are this run's, not a clean machine's; " + _lock()
            + "). Produced by `benchmarks/qlora.py`.", ""]
    if rows["claim"]:
        text += ["## LoRA on the 16-bit base vs QLoRA", "",
                 f"peft LoRA r={args.lora_r} (alpha {2 * args.lora_r}) on every Linear but the "
                 f"head; {args.questions}: seeded split (seed {args.seed}), "
                 f"{args.held_out:.0%} held out and never trained on; {args.steps} steps of "
                 f"{args.batch} examples (answer tokens scored, prompt masked), length ≤ "
                 f"{args.length}, AdamW lr {args.lr}; float tensors and activations bf16; "
                 + _dequant(args) + " Accuracy: lowbit's choice scoring (length-normalised "
                 "log-likelihood), Wilson 95% interval, computed after reloading the saved "
                 "adapter onto its base in float32 (bf16 matmuls are several times slower on "
                 "this CPU). Peak RSS: the row's own process, read after training, before that "
                 "reload, loading included (a bf16 model is read in float32, then cast); peak "
                 "RSS training: from the start of training to its end (the kernel's peak mark "
                 "reset when training starts), the base weights and everything training adds. "
                 "Kernel layouts: what the quantized layers' kernels keep beside the packed "
                 "weights (cpu-lut4 repacks its codes; a cached float weight included), which "
                 "the base-weights column does not count.",
                 "", *_claim(rows["claim"], args), "", *_verdict(rows["claim"]),
                 *_bnb(rows["claim"]), ""]
    if rows["recover"]:
        r0 = rows["recover"][0]
        text += ["## Recovery (`--recover`)", "",
                 f"Adapters (r={args.lora_r}) trained for {r0['steps']} steps of "
                 f"{args.recover_batch} windows of {args.recover_length} tokens from "
                 f"{', '.join(r0['data'])} (calibration text) toward the float32 model's "
                 f"next-token distribution (KL). Measured on {args.eval_text} (evaluation text, "
                 f"first {args.eval_tokens} tokens, windows of {args.context}, second halves "
                 "scored): mean KL(float ‖ model) and perplexity. Merge: adapters added to the "
                 "dequantized weights and requantized (rtn) under the same scheme.", "",
                 *_recover(rows["recover"]), ""]
    write_text_atomic(out, "\n".join(text))

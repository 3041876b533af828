"""The benchmark's rows, in the order they run, and how each tool produces its model.

A row is (model, tool, method, scheme). Every runner returns the quantized model as a torch
module (scored by :mod:`peers.scoring`) and a dict of what it measured itself (quantize seconds,
bits per Linear weight, settings). Peers run in their own virtual environments
(``benchmarks/peers/setup_*.sh``) as subprocesses; their dequantized weights come back through a
safetensors file.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import torch

from . import ggml
from .scoring import linear_bits_of_model, load_replaced

PEERS = Path(__file__).resolve().parent
SMOL, GEMMA = "smollm2-135m", "gemma-3-270m"
LOWBIT_METHODS = ("rtn", "gptq", "awq", "hqq", "rtn-imatrix")


def _lowbit(model: str, bits: int, group: int) -> list[dict]:
    """lowbit's methods: integer zero point (as GPTQ/AWQ/llm-compressor store it), except
    HQQ, whose solver refines a float zero point (as the hqq package does)."""
    return [{"model": model, "tool": "lowbit", "method": m,
             "scheme": f"int{bits}-asym-g{group}" + ("" if m == "hqq" else "-zpint")}
            for m in LOWBIT_METHODS]


def _peer(model: str, tool: str, method: str, bits: int, group: int) -> dict:
    zp = "" if tool == "hqq" else "-zpint"
    return {"model": model, "tool": tool, "method": method,
            "scheme": f"int{bits}-asym-g{group}{zp}"}


def _ggml(model: str, qtypes: tuple[str, ...], lowbit_too: bool = True) -> list[dict]:
    rows = []
    for q in qtypes:
        rows += [{"model": model, "tool": "llama.cpp", "method": "rtn", "scheme": q},
                 {"model": model, "tool": "llama.cpp", "method": "imatrix", "scheme": q}]
        if lowbit_too and q != "Q4_0":
            rows.append({"model": model, "tool": "lowbit", "method": "rtn (ggml)", "scheme": q})
    return rows


def catalog() -> list[dict]:
    """Every configured row, in priority order (the most important comparison first)."""
    rtn, gptq, awq, hqq, wrtn = _lowbit(SMOL, 4, 64)
    rows = [rtn, *_ggml(SMOL, ("Q4_0", "Q4_K_M")), gptq, hqq, _peer(SMOL, "hqq", "hqq", 4, 64),
            _peer(SMOL, "llm-compressor", "gptq", 4, 64), awq, wrtn,
            _peer(SMOL, "llm-compressor", "awq", 4, 64)]
    for bits in (3, 2):
        rows += [*_lowbit(SMOL, bits, 64), _peer(SMOL, "llm-compressor", "gptq", bits, 64)]
    rows += _ggml(SMOL, ("Q3_K_M", "Q2_K"))
    rows += [*_lowbit(GEMMA, 4, 128), *_ggml(GEMMA, ("Q4_0", "Q4_K_M")),
             _peer(GEMMA, "hqq", "hqq", 4, 128), _peer(GEMMA, "llm-compressor", "gptq", 4, 128),
             _peer(GEMMA, "llm-compressor", "awq", 4, 128)]
    rows += [*_lowbit(SMOL, 4, 128)[:1], _peer(SMOL, "hqq", "hqq", 3, 64),
             _peer(SMOL, "llm-compressor", "awq", 3, 64)]
    rows += [*_lowbit(GEMMA, 3, 64), *_ggml(GEMMA, ("Q3_K_M", "Q2_K"))]
    for r in rows:
        r["key"] = "|".join((r["model"], r["tool"], r["method"], r["scheme"]))
    return rows


def run_lowbit(row: dict, ctx) -> tuple[torch.nn.Module, dict]:
    """lowbit.quantize with the row's method (calibrated on the shared windows)."""
    import lowbit
    from lowbit.methods import get_method

    model, _ = lowbit.load_model(row["model"])
    method = get_method(row["method"])
    t0 = time.perf_counter()
    lowbit.quantize(model, row["scheme"], method=method,
                    calibration=ctx.calibration(row["model"]) if method.data_aware else None,
                    progress=False)
    seconds = time.perf_counter() - t0
    return model, {"seconds": seconds, "bits": linear_bits_of_model(model),
                   "settings": method.settings()}


def _bits_group(scheme: str) -> tuple[int, int]:
    parts = scheme.split("-")
    return int(parts[0][3:]), int(parts[2][1:])


def run_peer(row: dict, ctx) -> tuple[torch.nn.Module, dict]:
    """A peer package in its own venv, on the model's HF folder and the shared tokens."""
    from lowbit.models import ensure_builtin

    bits, group = _bits_group(row["scheme"])
    out = ctx.work / row["model"] / "peers" / f"{row['tool']}-{row['method']}-{bits}b-g{group}"
    if not (out / "meta.json").exists():
        script = "run_hqq.py" if row["tool"] == "hqq" else "run_llmcompressor.py"
        env_name = "hqq" if row["tool"] == "hqq" else "llmcompressor"
        python = subprocess.run(["bash", str(PEERS / f"setup_{env_name}.sh")], check=True,
                                capture_output=True, text=True).stdout.strip().splitlines()[-1]
        args = [python, str(PEERS / script), "--model", str(ensure_builtin(row["model"])),
                "--bits", str(bits), "--group", str(group), "--threads", str(ctx.threads),
                "--out", str(out)]
        if row["tool"] == "llm-compressor":
            args += ["--tokens", str(ctx.tokens_file(row["model"])), "--method", row["method"],
                     "--pipeline", ctx.llmc_pipeline, "--n-grid", str(ctx.awq_grid)]
        out.mkdir(parents=True, exist_ok=True)
        with open(out.parent / f"{out.name}.log", "w") as log:
            subprocess.run(args, check=True, stdout=log, stderr=subprocess.STDOUT)
    meta = json.loads((out / "meta.json").read_text())
    model = load_replaced(row["model"], out / "weights.safetensors")
    return model, {"seconds": meta["seconds"], "bits": meta["bits_per_weight"],
                   "settings": {"version": meta["version"], **meta["settings"]}}


def run_llamacpp(row: dict, ctx) -> tuple[torch.nn.Module, dict]:
    """llama-quantize from the F32 GGUF (with llama-imatrix's matrix for 'imatrix'), loaded
    back into torch by lowbit."""
    import lowbit

    name, qtype = row["model"], row["scheme"]
    f32 = ggml.f32_gguf(name, ctx.work, ctx.threads)
    im = ctx.imatrix(name) if row["method"] == "imatrix" else None
    out = ctx.work / name / f"{qtype}-{row['method']}.gguf"
    seconds = ggml.quantize(f32, out, qtype, ctx.threads, im)
    bits, types = ggml.linear_bits(out)
    model, _ = lowbit.load_model(out)
    return model, {"seconds": seconds, "bits": bits, "settings": {"types": types}}


def run_lowbit_ggml(row: dict, ctx) -> tuple[torch.nn.Module | None, dict]:
    """lowbit's ggml encoders (``lowbit.export.to_gguf``) on the same F32 GGUF. When its Linear
    tensors are byte-identical to llama.cpp's file without imatrix, the model is that file's
    and the row reuses its scores (returns None)."""
    from lowbit.export import to_gguf

    name, qtype = row["model"], row["scheme"]
    f32 = ggml.f32_gguf(name, ctx.work, ctx.threads)
    theirs = ctx.work / name / f"{qtype}-rtn.gguf"
    if not theirs.exists():
        ggml.quantize(f32, theirs, qtype, ctx.threads)
    ours = ctx.work / name / f"{qtype}-lowbit.gguf"
    report = to_gguf(f32, ours, qtype=qtype, force=True)
    same = ggml.linear_tensors(ours) == ggml.linear_tensors(theirs)
    bits, types = ggml.linear_bits(ours)
    info = {"seconds": report.seconds, "bits": bits,
            "settings": {"types": types, "same_linear_bytes_as_llamacpp": same}}
    if same:
        return None, info
    import lowbit

    return lowbit.load_model(ours)[0], info


def runner(row: dict):
    """The function that produces ``row``'s model."""
    if row["tool"] == "lowbit":
        return run_lowbit_ggml if row["method"] == "rtn (ggml)" else run_lowbit
    return run_llamacpp if row["tool"] == "llama.cpp" else run_peer

"""Quantize a Hugging Face folder's Linear weights with the ``hqq`` package (runs in its own venv).

hqq's half-quadratic solver (defaults: lp 0.7, 20 iterations, beta 10, kappa 1.01, float zero
point) on each decoder Linear, groups of ``--group`` consecutive weights along a row (axis=1;
hqq groups the flattened weight, so the group must divide the row length). Scale and zero are
rounded through float16 as hqq stores them, and the dequantized weights are written to
``OUT/weights.safetensors`` with ``OUT/meta.json`` (seconds, settings, bits per weight).

    .venv-peers/hqq/bin/python benchmarks/peers/run_hqq.py --model DIR --bits 4 --group 64 --out OUT
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import save_file


def decoder_linears(model_dir: Path) -> dict[str, torch.Tensor]:
    """The float weights of the decoder blocks' Linears (not embeddings, not lm_head)."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            if ".layers." in name and name.endswith("proj.weight"):
                out[name] = f.get_tensor(name).float()
    return out


def hqq_dequantized(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """hqq's quantize-then-dequantize of one weight, scale and zero kept in float16."""
    from hqq.core.quantize import Quantizer

    if w.shape[1] % group:
        raise ValueError(f"group {group} does not divide the row length {w.shape[1]}")
    w_q, meta = Quantizer.quantize(w, nbits=bits, group_size=group, optimize=True, axis=1,
                                   bitpack=False, compute_dtype=torch.float32, device="cpu")
    scale, zero = meta["scale"].half().float(), meta["zero"].half().float()
    return ((w_q.float() - zero) * scale).reshape(meta["shape"]).contiguous()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    weights = decoder_linears(args.model)
    t0 = time.perf_counter()
    out = {name: hqq_dequantized(w, args.bits, args.group) for name, w in weights.items()}
    seconds = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(out, str(args.out / "weights.safetensors"))
    meta = {"tool": "hqq", "version": version("hqq"), "seconds": seconds,
            "settings": {"nbits": args.bits, "group_size": args.group, "axis": 1,
                         "optimize": True, "round_zero": False, "meta_dtype": "float16"},
            "bits_per_weight": args.bits + 32 / args.group,
            "bits_note": "codes + float16 scale and float16 zero per group"}
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()

"""Quantize a Hugging Face folder with llm-compressor's GPTQ or AWQ (runs in its own venv).

Calibration uses the token ids in ``--tokens`` (a safetensors file with ``input_ids``, written by
``benchmarks/methods_vs_peers.py`` from lowbit's own calibration windows), so llm-compressor sees
exactly the tokens lowbit does. Weights: integer, asymmetric, groups of ``--group`` along the row,
integer zero point (compressed-tensors' W4A16_ASYM family); lm_head and embeddings stay float.
GPTQ: 1% damping, blocks of 128, no act-order (lowbit's ``gptq`` defaults). AWQ: llm-compressor's
default mappings, duo scaling, ``--n-grid`` grid points, then its round-to-nearest
QuantizationModifier; the accelerator-only ``pin_memory`` of its activation cache is patched to a
no-op (it raises "Cannot access accelerator device" on a CPU-only machine).

Writes the fake-quantized (dequantized) decoder weights and every other changed float tensor
(AWQ folds its scales into the norms) to ``OUT/weights.safetensors``, and ``OUT/meta.json``.

    .venv-peers/llmcompressor/bin/python benchmarks/peers/run_llmcompressor.py \
        --model DIR --tokens tokens.safetensors --method gptq --bits 4 --group 64 --out OUT
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def recipe(method: str, bits: int, group: int, n_grid: int) -> list:
    """The llm-compressor modifiers for ``method`` at ``bits`` / ``group``."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    weights = QuantizationArgs(num_bits=bits, type="int", symmetric=False, strategy="group",
                               group_size=group)
    groups = {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}
    if method == "gptq":
        return [GPTQModifier(config_groups=groups, ignore=["lm_head"], actorder=None,
                             dampening_frac=0.01, block_size=128)]
    return [AWQModifier(n_grid=n_grid, duo_scaling=True),
            QuantizationModifier(config_groups=groups, ignore=["lm_head"])]


def patch_pin_memory() -> None:
    """Make the activation cache's pin_memory a no-op (no accelerator here)."""
    from llmcompressor.pipelines.cache import IntermediatesCache

    IntermediatesCache.pin_memory = lambda self, *a, **k: None


def fake_quantized_state(model: torch.nn.Module, keep: set[str]) -> dict[str, torch.Tensor]:
    """The model's float tensors named in ``keep``, each quantized Linear weight replaced by its
    dequantized value under the module's scale (rounded to float16), zero point and args."""
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    out = {}
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            name = f"{mname}.{pname}" if mname else pname
            if name not in keep:
                continue
            value = p.detach()
            if pname == "weight" and hasattr(module, "weight_scale"):
                scale = module.weight_scale.detach().half().to(value.dtype)  # stored as fp16
                value = fake_quantize(value, scale, getattr(module, "weight_zero_point", None),
                                      module.quantization_scheme.weights)
            out[name] = value.float().contiguous().clone()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--tokens", type=Path, required=True)
    p.add_argument("--method", choices=["gptq", "awq"], required=True)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group", type=int, default=64)
    p.add_argument("--pipeline", default="basic", help="basic, sequential or independent")
    p.add_argument("--n-grid", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    patch_pin_memory()
    ids = load_file(str(args.tokens))["input_ids"]
    data = Dataset.from_dict({"input_ids": ids.tolist(),
                              "attention_mask": torch.ones_like(ids).tolist()})
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    keep = {k for k in load_file(str(args.model / "model.safetensors"))
            if "embed_tokens" not in k and "lm_head" not in k}
    t0 = time.perf_counter()
    oneshot(model=model, processor=tokenizer, dataset=data,
            recipe=recipe(args.method, args.bits, args.group, args.n_grid),
            num_calibration_samples=ids.shape[0], max_seq_length=ids.shape[1],
            pipeline=args.pipeline, shuffle_calibration_samples=False)
    seconds = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(fake_quantized_state(model, keep), str(args.out / "weights.safetensors"))
    meta = {"tool": "llm-compressor", "version": version("llmcompressor"), "seconds": seconds,
            "settings": {"method": args.method, "bits": args.bits, "group_size": args.group,
                         "symmetric": False, "pipeline": args.pipeline,
                         "calibration": list(ids.shape),
                         **({"n_grid": args.n_grid, "duo_scaling": True}
                            if args.method == "awq" else
                            {"actorder": None, "dampening_frac": 0.01, "block_size": 128})},
            "bits_per_weight": args.bits + (16 + args.bits) / args.group,
            "bits_note": "codes + float16 scale + integer zero point of `bits` bits per group"}
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()

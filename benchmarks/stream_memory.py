"""Peak memory of streaming quantization on a synthetic multi-shard model of over 3 GB (fp32).

1. Writes a random Llama-shaped model (SmolLM2's tokenizer, ~790 M parameters, fp32, shards of
   ~500 MB) into a work folder, one shard at a time.
2. Runs ``lowbit quantize`` on it in a fresh process and reads that process's peak RSS; does
   the same on a tiny model to get the Python/torch/transformers baseline of the same command.
3. Loads the model in memory, quantizes and saves it with ``lowbit.quantize`` + ``lowbit.save``
   and checks that every stored tensor equals the streamed checkpoint's.

Goal (issue 3): peak RSS minus the baseline below 25% of the model's size.

    .venv/bin/python benchmarks/stream_memory.py   # -> benchmarks/results/stream_memory.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lowbit.storage.atomic import write_text_atomic

RESULTS = Path(__file__).parent / "results" / "stream_memory.md"
SCHEME = "int4-asym-g128"
SHARD_BYTES = 500 * 10**6

_MEASURE = r"""
import resource, subprocess, sys, json, time
t = time.perf_counter()
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
if r.returncode:
    sys.stderr.write(r.stdout + r.stderr); sys.exit(r.returncode)
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "seconds": time.perf_counter() - t}))
"""


def _config(hidden: int, inter: int, layers: int, vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                       num_hidden_layers=layers, num_attention_heads=hidden // 128,
                       num_key_value_heads=max(1, hidden // 512), tie_word_embeddings=False,
                       max_position_embeddings=2048)


def write_synthetic(folder: Path, config, tokenizer_src: Path, shard_bytes: int) -> int:
    """Write a random model shard by shard; return its fp32 size in bytes."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    shapes = {n: tuple(p.shape) for n, p in skeleton.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    shard: dict[str, torch.Tensor] = {}
    size, total, n_shard, weight_map = 0, 0, 0, {}

    def flush() -> None:
        nonlocal shard, size, n_shard
        n_shard += 1
        name = f"model-{n_shard:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        shard, size = {}, 0

    for name, shape in tqdm(shapes.items(), desc="write synthetic model", unit="tensor"):
        t = torch.empty(shape)
        if name.endswith("norm.weight"):
            t.fill_(1.0)
        else:
            t.normal_(0.0, 0.02, generator=gen)
        shard[name] = t
        size += t.numel() * 4
        total += t.numel() * 4
        if size >= shard_bytes:
            flush()
    if shard:
        flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
    config.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_src).save_pretrained(folder)
    return total


def measure_quantize(source: Path, out: Path) -> dict:
    cmd = [sys.executable, "-c", _MEASURE, str(Path(sys.executable).parent / "lowbit"),
           "quantize", str(source), "--scheme", SCHEME, "-o", str(out), "--force"]
    r = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def compare_with_in_memory(source: Path, streamed: Path, work: Path) -> tuple[int, int]:
    """(tensors compared, tensors that differ) between the streamed and in-memory checkpoints."""
    from safetensors import safe_open

    import lowbit

    model, tok = lowbit.load_model(str(source))
    lowbit.quantize(model, SCHEME, progress=True)
    in_memory = lowbit.save(model, work / "in-memory", tokenizer=tok, force=True)
    del model
    a = json.loads((streamed / "lowbit.json").read_text())
    b = json.loads((in_memory / "lowbit.json").read_text())
    if set(a["tensors"]) != set(b["tensors"]):
        return len(a["tensors"]), -1
    differ = 0
    for name in a["tensors"]:
        with safe_open(str(streamed / a["tensors"][name]), "pt") as f1, \
                safe_open(str(in_memory / b["tensors"][name]), "pt") as f2:
            differ += not torch.equal(f1.get_tensor(name), f2.get_tensor(name))
    return len(a["tensors"]), differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: temp)")
    parser.add_argument("--layers", type=int, default=13)
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument("-o", "--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    from lowbit.models import resolve_source

    work = args.work or Path(tempfile.mkdtemp(prefix="lowbit-stream-"))
    tok_src = resolve_source("smollm2-135m").path
    vocab = 49152
    big, tiny = work / "synthetic", work / "tiny"
    t0 = time.perf_counter()
    size = write_synthetic(big, _config(2048, 5632, args.layers, vocab), tok_src, SHARD_BYTES)
    write_synthetic(tiny, _config(256, 512, 1, vocab), tok_src, SHARD_BYTES)
    n_shards = len(list(big.glob("*.safetensors")))
    gen_s = time.perf_counter() - t0
    base = measure_quantize(tiny, work / "tiny-q")
    run = measure_quantize(big, work / "big-q")
    extra = (run["peak_kib"] - base["peak_kib"]) * 1024
    compared = differ = None
    if not args.skip_compare:
        compared, differ = compare_with_in_memory(big, work / "big-q", work)
    lines = [
        "# Streaming quantization: peak memory",
        "",
        f"Produced by `benchmarks/stream_memory.py`: a random Llama-shaped model of "
        f"{size / 1e9:.2f} GB fp32 in {n_shards} shards, quantized to `{SCHEME}` by "
        f"`lowbit quantize` (generation took {gen_s:.0f} s).",
        "",
        "| run | peak RSS | time |",
        "|---|---:|---:|",
        f"| baseline: same command on a 1-layer model | {base['peak_kib'] / 2**20:.2f} GiB | "
        f"{base['seconds']:.1f} s |",
        f"| {size / 1e9:.2f} GB model | {run['peak_kib'] / 2**20:.2f} GiB | "
        f"{run['seconds']:.1f} s |",
        "",
        f"Peak RSS above the baseline: **{extra / 1e9:.2f} GB = {extra / size:.1%} of the "
        f"model's size** (goal: below 25%).",
    ]
    if compared is not None:
        verdict = "identical" if differ == 0 else f"{differ} differ"
        lines.append(f"Streamed vs in-memory checkpoint: {compared} tensors compared, {verdict}.")
    write_text_atomic(args.output, "\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

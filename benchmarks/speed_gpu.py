"""GPU decode speed: bf16 PyTorch, lowbit's Triton kernels, torchao and bitsandbytes, side by side.

Models have random weights (deterministic seed, bfloat16), built from transformers configs with
the shapes of Llama-3.2-1B, Llama-3.1-8B and Gemma-3-270M: speed only, never quality. Every
method quantizes the decoder's Linear layers and keeps ``lm_head`` and the embeddings in bf16.
Decode runs eagerly (no torch.compile, no CUDA graphs) with a KV cache after a short prompt;
tok/s counts every sequence of the batch. The roofline is weight bytes / measured bandwidth
(a device-to-device copy), the batch-1 bound. ``max |dlogit|`` compares lowbit's kernels with
lowbit's reference kernel (dequantize + matmul) on the same quantized model and prompt.

    python benchmarks/speed_gpu.py                 # needs CUDA -> results/speed_gpu.md
    python benchmarks/speed_gpu.py --interpret-smoke --out /tmp/smoke.md

``--interpret-smoke`` runs a tiny Llama on the CPU through the same code path, with the Triton
kernels in Triton's interpreter: it checks the script, it measures nothing. Without CUDA and
without that flag the script exits with a message and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "speed_gpu.md"
LOWBIT_SCHEMES = {"int4": "int4-asym-g128", "int8": "int8-sym-channel",
                  "fp8": "fp8-e4m3-channel", "nvfp4": "nvfp4", "mxfp4": "mxfp4"}
PEERS = ("torchao int4 weight-only (g128)", "torchao int8 weight-only",
         "bitsandbytes nf4")
MODELS = ("llama-1b", "llama-8b", "gemma-3-270m")
LLAMA_SHAPES = {  # Llama-3.2-1B and Llama-3.1-8B (untied heads here: lm_head stays bf16)
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "tiny": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=1,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=256),
}
GEMMA_270M = dict(hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                  num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                  vocab_size=262144)


@dataclass
class Settings:
    """What one run measures and where."""

    device: str
    models: tuple[str, ...]
    batches: tuple[int, ...]
    prompt: int
    steps: int
    warmup: int
    smoke: bool
    kernel: str = "triton"
    notes: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: " +
                   ", ".join(MODELS))
    p.add_argument("--batches", default="1,8,32", help="decode batch sizes")
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens before decoding")
    p.add_argument("--steps", type=int, default=64, help="timed decode steps")
    p.add_argument("--warmup", type=int, default=8, help="untimed decode steps first")
    p.add_argument("--out", type=Path, default=None,
                   help=f"results file (default {RESULTS}; none in smoke mode unless given)")
    p.add_argument("--interpret-smoke", action="store_true",
                   help="tiny model on the CPU, Triton kernels interpreted: checks the path")
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> Settings:
    if args.interpret_smoke:
        return Settings("cpu", ("tiny",), (1, 9), prompt=4, steps=1, warmup=1, smoke=True,
                        kernel="triton-interpret")
    return Settings("cuda", tuple(m.strip() for m in args.models.split(",") if m.strip()),
                    tuple(int(b) for b in args.batches.split(",")), args.prompt, args.steps,
                    args.warmup, smoke=False)


# --- models ----------------------------------------------------------------------------
def build_model(name: str, device: str, seed: int = 0):
    """A random-weight causal LM of ``name``'s shapes in bfloat16 on ``device``."""
    import torch

    config = _config(name)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = _model_class(name)(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def _config(name: str):
    if name == "gemma-3-270m":
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig(**GEMMA_270M, tie_word_embeddings=True)
    if name not in LLAMA_SHAPES:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    from transformers import LlamaConfig

    return LlamaConfig(**LLAMA_SHAPES[name], tie_word_embeddings=False)


def _model_class(name: str):
    if name == "gemma-3-270m":
        from transformers import Gemma3ForCausalLM

        return Gemma3ForCausalLM
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM


def weight_bytes(model) -> int:
    """Bytes one decode step reads: every parameter and buffer (each storage once), except an
    input embedding table that no head shares (a step reads one row of it)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.untyped_storage().data_ptr() == \
        emb.untyped_storage().data_ptr()
    seen = set() if tied else {emb.untyped_storage().data_ptr()}
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


# --- methods ---------------------------------------------------------------------------
def apply_lowbit(model, scheme: str, kernel: str) -> None:
    """Quantize the decoder's Linears (round-to-nearest) and pin ``kernel`` on every layer."""
    import torch

    import lowbit

    lowbit.quantize(model, scheme, keep_dtype=torch.bfloat16, progress=False)
    lowbit.kernels.use(model, kernel)


def apply_peer(model, name: str) -> None:
    """torchao or bitsandbytes on the decoder's Linears; ImportError when not installed."""
    if name.startswith("torchao"):
        _torchao(model, int4="int4" in name)
    else:
        _bnb_nf4(model)


def _decoder_linear(module, fqn: str) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear) and "lm_head" not in fqn


def _torchao(model, int4: bool) -> None:
    from torchao.quantization import quantize_

    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
        config = Int4WeightOnlyConfig(group_size=128) if int4 else Int8WeightOnlyConfig()
    except ImportError:  # torchao < 0.9 names
        from torchao.quantization import int4_weight_only, int8_weight_only
        config = int4_weight_only(group_size=128) if int4 else int8_weight_only()
    quantize_(model, config, filter_fn=_decoder_linear)


def _bnb_nf4(model) -> None:
    import bitsandbytes as bnb
    import torch

    for fqn, module in list(model.named_modules()):
        if not _decoder_linear(module, fqn):
            continue
        parent_name, _, child = fqn.rpartition(".")
        new = bnb.nn.Linear4bit(module.in_features, module.out_features,
                                bias=module.bias is not None, compute_dtype=torch.bfloat16,
                                quant_type="nf4", device="meta")
        new.weight = bnb.nn.Params4bit(module.weight.data.cpu(), requires_grad=False,
                                       quant_type="nf4")
        if module.bias is not None:
            new.bias = torch.nn.Parameter(module.bias.data, requires_grad=False)
        setattr(model.get_submodule(parent_name), child, new.to(module.weight.device))


# --- measuring -------------------------------------------------------------------------
def bandwidth(device: str, nbytes: int = 1 << 30, repeats: int = 10) -> float | None:
    """Device memory bandwidth in bytes/s (a copy reads and writes ``nbytes``); None on CPU."""
    import torch

    if device != "cuda":
        return None
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * nbytes * repeats / (time.perf_counter() - t)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def decode_tok_s(model, batch: int, st: Settings) -> float:
    """Tokens per second over ``st.steps`` greedy decode steps after a prompt and warm-up."""
    import torch

    vocab = model.config.vocab_size
    g = torch.Generator(device="cpu").manual_seed(batch)
    ids = torch.randint(vocab, (batch, st.prompt), generator=g).to(st.device)
    with torch.inference_mode():
        out = model(ids, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(st.warmup):
            out = model(nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        _sync(st.device)
        t = time.perf_counter()
        for _ in range(st.steps):
            out = model(nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        _sync(st.device)
    return batch * st.steps / (time.perf_counter() - t)


def logit_gap(model, st: Settings) -> float:
    """Max |logit| difference between the pinned kernels and lowbit's reference kernel."""
    import torch

    import lowbit

    ids = torch.randint(model.config.vocab_size, (2, st.prompt),
                        generator=torch.Generator().manual_seed(1)).to(st.device)
    with torch.inference_mode():
        fast = model(ids).logits.float()
        with lowbit.kernels.using(model, "reference"):
            ref = model(ids).logits.float()
    return float((fast - ref).abs().max())


# --- one row per (model, method) -------------------------------------------------------
@dataclass
class Row:
    """What was measured for one model and method."""

    model: str
    method: str
    gbytes: float
    tok_s: dict[int, float]
    kernels: str = ""
    logit_gap: float | None = None


def measure_method(model_name: str, method: str, st: Settings) -> Row:
    """Build the model, apply ``method`` (``bf16``, ``lowbit <scheme>`` or a peer), decode."""
    import torch

    import lowbit

    model = build_model(model_name, st.device)
    scheme = method.removeprefix("lowbit ") if method.startswith("lowbit ") else None
    if scheme:
        apply_lowbit(model, scheme, st.kernel)
    elif method != "bf16":
        apply_peer(model, method)
    row = Row(model_name, method, weight_bytes(model) / 1e9, {})
    if scheme:
        lowbit.kernels.reset_ran(model)
    for batch in st.batches:
        row.tok_s[batch] = decode_tok_s(model, batch, st)
    if scheme:
        tally = lowbit.kernels.tally(model)
        row.kernels = ", ".join(f"{k} x{n}" for k, n in tally.items())
        row.logit_gap = logit_gap(model, st)
    del model
    if st.device == "cuda":
        torch.cuda.empty_cache()
    return row


def methods(st: Settings) -> list[str]:
    """bf16, lowbit's schemes, and the peers (not in smoke mode: they need CUDA)."""
    names = ["bf16", *(f"lowbit {s}" for s in LOWBIT_SCHEMES.values())]
    if st.smoke:
        st.notes.append("peers (torchao, bitsandbytes) not run: smoke mode runs on the CPU")
        return names
    return names + list(PEERS)


def run_all(st: Settings) -> list[Row]:
    """Every (model, method); a peer that is missing or fails becomes a note, lowbit raises."""
    rows: list[Row] = []
    names = methods(st)
    for model_name in st.models:
        for method in names:
            try:
                rows.append(measure_method(model_name, method, st))
            except Exception as err:  # a peer's failure must not lose lowbit's rows
                if method.startswith(("bf16", "lowbit")) and not _missing_model(err):
                    raise
                what = "not importable" if isinstance(err, ImportError) else "failed"
                st.notes.append(f"{model_name}, {method}: {what}: {type(err).__name__}: {err}")
            print(f"{model_name:14s} {method:34s} done", file=sys.stderr)
    return rows


def _missing_model(err: Exception) -> bool:
    """An ImportError for a model class this transformers lacks (Gemma 3), not for lowbit."""
    return isinstance(err, ImportError) and "transformers" in str(err)


# --- report ----------------------------------------------------------------------------
def table(rows: list[Row], st: Settings, bw: float | None) -> str:
    """The Markdown table: tok/s per batch, % of the batch-1 roofline, kernels, logit gap."""
    head = ["model", "method", "weights GB", *(f"tok/s b{b}" for b in st.batches),
            "% roofline b1", "kernels (layers)", "max abs dlogit vs reference"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        roof = bw / (r.gbytes * 1e9) if bw else None
        b1 = r.tok_s.get(1)
        pct = f"{100 * b1 / roof:.0f}%" if roof and b1 else "-"
        gap = "-" if r.logit_gap is None else f"{r.logit_gap:.3g}"
        cells = [r.model, r.method, f"{r.gbytes:.3f}",
                 *(f"{r.tok_s[b]:.1f}" for b in st.batches), pct, r.kernels or "-", gap]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(rows: list[Row], st: Settings, bw: float | None) -> str:
    import torch
    import triton

    dev = torch.cuda.get_device_name() if st.device == "cuda" else "CPU (Triton interpreter)"
    out = ["# GPU decode speed (benchmarks/speed_gpu.py)", ""]
    if st.smoke:
        out += ["**Interpreter smoke run: the code path on a tiny model, not a measurement.**", ""]
    out += [f"Device: {dev}; torch {torch.__version__}, triton {triton.__version__}. "
            f"Bandwidth (device copy): {bw / 1e9:.0f} GB/s." if bw else
            f"Device: {dev}; torch {torch.__version__}, triton {triton.__version__}.",
            f"Prompt {st.prompt} tokens, {st.warmup} warm-up and {st.steps} timed decode steps, "
            "eager mode; lm_head and embeddings bf16 in every row.", "", table(rows, st, bw)]
    if st.notes:
        out += ["", "Notes:", *(f"- {n}" for n in st.notes)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
    args = parse_args(argv)
    st = settings(args)
    if st.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (by lowbit, lazily)
    import torch

    if not st.smoke and not torch.cuda.is_available():
        print("speed_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); no results "
              "written. --interpret-smoke checks the code path on the CPU.", file=sys.stderr)
        return 2
    from lowbit.kernels import triton_linear

    if not triton_linear.available():
        print("speed_gpu.py needs triton (pip install 'lowbit[triton]'); no results written.",
              file=sys.stderr)
        return 2
    if st.smoke:
        triton_linear.register_interpreted()
    bw = bandwidth(st.device)
    text = report(run_all(st), st, bw)
    print(text)
    out = args.out or (None if st.smoke else RESULTS)
    if out is not None:
        from lowbit.storage.atomic import write_text_atomic

        write_text_atomic(Path(out), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

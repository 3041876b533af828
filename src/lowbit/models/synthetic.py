"""SPEED ONLY: Llama-shaped models with seeded random weights, for measuring kernels.

``synthetic-llama-1b`` has TinyLlama-1.1B's block shapes (hidden 2048, 22 blocks, 32 heads of
64, 4 KV heads, MLP 5632) with SmolLM2's tokenizer and vocabulary (49152, tied head): about
1.07e9 parameters, large enough that decoding is limited by memory bandwidth on a CPU. Its
weights are random numbers (normal, std 0.02; norms 1), generated here from a fixed seed per
tensor name, so every machine builds the same bytes. It produces no meaningful text:
**never report its perplexity, KL or accuracy** — only tokens per second and memory. The names
say so (``synthetic-``), and the folder's marker records ``"purpose": "speed only"``.

Built on first use into ``$LOWBIT_CACHE/models/NAME`` (bf16 safetensors, about 2.1 GB),
written into a hidden sibling folder and renamed into place, like converted built-ins. Beside
the weights sits ``template.gguf``: the tokenizer's GGUF metadata with this shape's
hyperparameters and tensor list (its tensor data are zeros), which the GGUF exporter copies
its metadata from, so that llama.cpp can run the same weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lowbit.models.builtins import builtin_dir
from lowbit.models.conversion import MARKER, MARKER_VERSION, is_converted

log = logging.getLogger(__name__)
INIT_STD = 0.02
SPEED_ONLY = "speed only: random weights, never use for quality"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
GGUF_TEMPLATE = "template.gguf"


@dataclass(frozen=True)
class SyntheticSpec:
    """The shape of a synthetic Llama; the tokenizer is borrowed from built-in ``tokenizer``."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int = 49152
    tokenizer: str = "smollm2-135m"
    seed: int = 0

    def config(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` of this model."""
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": self.hidden, "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
            "head_dim": self.hidden // self.heads, "intermediate_size": self.intermediate,
            "vocab_size": self.vocab, "tie_word_embeddings": True, "hidden_act": "silu",
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "bos_token_id": 1,
            "eos_token_id": 2, "pad_token_id": 2, "attention_bias": False, "mlp_bias": False,
            "rope_theta": 10000.0, "torch_dtype": "bfloat16",
            "lowbit_purpose": SPEED_ONLY,
        }

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's name and shape, in the Hugging Face Llama layout."""
        h, kv = self.hidden, self.kv_heads * (self.hidden // self.heads)
        out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab, h),
                                           "model.norm.weight": (h,)}
        for i in range(self.layers):
            p = f"model.layers.{i}."
            out.update({
                p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                p + "mlp.gate_proj.weight": (self.intermediate, h),
                p + "mlp.up_proj.weight": (self.intermediate, h),
                p + "mlp.down_proj.weight": (h, self.intermediate),
                p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            })
        return out

    def n_parameters(self) -> int:
        """Parameters (the tied head counted once)."""
        total = 0
        for shape in self.shapes().values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total


SYNTHETIC: dict[str, SyntheticSpec] = {s.name: s for s in (
    SyntheticSpec("synthetic-llama-1b", hidden=2048, layers=22, heads=32, kv_heads=4,
                  intermediate=5632),
    SyntheticSpec("synthetic-llama-tiny", hidden=128, layers=2, heads=4, kv_heads=2,
                  intermediate=256),
)}


def tensor_seed(spec: SyntheticSpec, name: str) -> int:
    """The seed of one tensor: from the model's seed and the tensor's name (order-free)."""
    digest = hashlib.sha256(f"{spec.seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def make_tensor(spec: SyntheticSpec, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """One weight: ones for a norm, else seeded normal(0, 0.02), as bf16."""
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(tensor_seed(spec, name))
    return (torch.randn(shape, generator=gen) * INIT_STD).to(torch.bfloat16)


def ensure_synthetic(name: str, progress: bool = True) -> Path:
    """The folder of synthetic model ``name``, generated on first use (see the module).

    Concurrent callers serialise on a lock file; the second finds the first's result."""
    from lowbit.models.conversion import _file_lock, ensure_builtin
    from lowbit.storage.partials import replacing_folder, temp_sibling

    if name not in SYNTHETIC:
        raise ValueError(f"unknown synthetic model {name!r}; names: {sorted(SYNTHETIC)}")
    spec = SYNTHETIC[name]
    final = builtin_dir(name)
    if is_converted(final):
        if not (final / GGUF_TEMPLATE).is_file():  # generated before templates existed
            tmp = temp_sibling(final / GGUF_TEMPLATE)
            write_gguf_template(spec, tmp)
            tmp.rename(final / GGUF_TEMPLATE)
        return final
    tok_folder = ensure_builtin(spec.tokenizer)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(final.parent / f".{final.name}.lock"):
        if is_converted(final):
            return final
        with replacing_folder(final) as work:
            _write(spec, work, tok_folder, progress)
    log.warning("%s: random weights, for speed measurements only (%d parameters)", name,
                spec.n_parameters())
    return final


def _write(spec: SyntheticSpec, work: Path, tok_folder: Path, progress: bool) -> None:
    """Weights, config, tokenizer files and, last, the marker, into ``work``."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    tensors = {n: make_tensor(spec, n, s) for n, s in tqdm(
        spec.shapes().items(), desc=f"generating {spec.name} (random weights, speed only)",
        disable=not progress, unit="tensor")}
    save_file(tensors, str(work / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    (work / "config.json").write_text(json.dumps(spec.config(), indent=1))
    for f in _TOKENIZER_FILES:
        if (tok_folder / f).exists():
            shutil.copyfile(tok_folder / f, work / f)
    marker = {"version": MARKER_VERSION, "name": spec.name, "dtype": "bfloat16",
              "purpose": SPEED_ONLY, "upstream": {"synthetic": True, "seed": spec.seed,
                                                  "tokenizer": spec.tokenizer}}
    write_gguf_template(spec, work / GGUF_TEMPLATE)
    (work / MARKER).write_text(json.dumps(marker, indent=1))


def _hyperparameters(spec: SyntheticSpec) -> dict[str, tuple[Any, Any]]:
    import gguf

    u32, f32 = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32
    return {"llama.block_count": (spec.layers, u32), "llama.context_length": (4096, u32),
            "llama.embedding_length": (spec.hidden, u32),
            "llama.feed_forward_length": (spec.intermediate, u32),
            "llama.attention.head_count": (spec.heads, u32),
            "llama.attention.head_count_kv": (spec.kv_heads, u32),
            "llama.rope.freq_base": (10000.0, f32),
            "llama.attention.layer_norm_rms_epsilon": (1e-5, f32),
            "llama.vocab_size": (spec.vocab, u32),
            "llama.rope.dimension_count": (spec.hidden // spec.heads, u32),
            "general.name": (spec.name, gguf.GGUFValueType.STRING),
            "general.size_label": ("speed-only", gguf.GGUFValueType.STRING)}


def write_gguf_template(spec: SyntheticSpec, out: Path) -> None:
    """The exporter's template: the tokenizer model's GGUF metadata, this shape's
    hyperparameters, and every tensor's name and shape (data zeros, Q2_K where rows allow)."""
    import tempfile

    import gguf
    import numpy as np

    from lowbit.export.gguf_metadata import copy_metadata, gguf_name
    from lowbit.models.builtins import BUILTINS

    with tempfile.TemporaryDirectory(prefix="lowbit-template-") as tmp:
        reader = gguf.GGUFReader(str(BUILTINS[spec.tokenizer].fetch(Path(tmp))))
        writer = gguf.GGUFWriter(str(out), "llama")
        copy_metadata(reader, writer, None)
    for key, (value, vtype) in _hyperparameters(spec).items():
        writer.kv_data[0][key] = gguf.GGUFValue(value=value, type=vtype)
    blocks = []
    for name, shape in spec.shapes().items():
        rows = shape if len(shape) == 2 else (shape[0],)
        qtype = gguf.GGMLQuantizationType.Q2_K if rows[-1] % 256 == 0 \
            else gguf.GGMLQuantizationType.F32
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        nbytes = int(np.prod(rows)) // block * size
        writer.add_tensor_info(gguf_name(name, "llama", spec.layers), rows,
                               np.dtype(np.float32), nbytes, raw_dtype=qtype)
        blocks.append(nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for nbytes in blocks:
        writer.write_tensor_data(np.zeros(nbytes, dtype=np.uint8))
    writer.close()


def is_synthetic(model: Any) -> bool:
    """Whether a loaded model is one of these (its config carries the speed-only mark)."""
    return getattr(getattr(model, "config", None), "lowbit_purpose", None) == SPEED_ONLY

"""GGUF metadata for a model with no GGUF behind it: hyperparameters from its Hugging Face config
(``config.json``) and the tokenizer from ``tokenizer.json`` (see `gguf_vocab`).

The keys are the ones llama.cpp's loader reads for each architecture: llama (Llama, Mistral),
qwen2, qwen3 and gemma3. Settings llama.cpp would run differently from transformers (a rope
scaling it does not get from these keys, Qwen2's sliding window, a Gemma-3 whose sliding
layers do not follow llama.cpp's every-sixth-layer-global pattern) are refused by name.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.export.gguf_metadata import ARCHITECTURES
from lowbit.export.gguf_vocab import Vocab, read_vocab

log = logging.getLogger(__name__)

#: Hugging Face model_types exported from config.json + tokenizer.json, to their GGUF arch:
#: the exporter's architectures less a multimodal Gemma-3 config (only from its GGUF template)
HF_ARCHITECTURES = {k: v for k, v in ARCHITECTURES.items() if k != "gemma3"}
GEMMA3_SWA_PATTERN = 6  # llama.cpp's gemma3: every sixth layer attends globally


def check_hf_arch(config: Any) -> str:
    """The GGUF architecture of `config` for an export without a GGUF template."""
    model_type = getattr(config, "model_type", None)
    if model_type not in HF_ARCHITECTURES:
        raise ValueError(
            f"GGUF export from a Hugging Face folder (no GGUF file behind it) supports "
            f"model_type {', '.join(HF_ARCHITECTURES)}, not {model_type!r}"
        )
    return HF_ARCHITECTURES[model_type]


def _rope(config: Any) -> tuple[float, dict]:
    """(rope theta of the global layers, their scaling dict), from transformers 4 or 5 names."""
    params = getattr(config, "rope_parameters", None) or {}
    if "full_attention" in params:  # per layer type (Gemma-3 under transformers 5)
        params = params["full_attention"] or {}
    scaling = dict(getattr(config, "rope_scaling", None) or params)
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ValueError(f"config.json ({config.model_type}): no rope_theta")
    return float(theta), scaling


def _rope_keys(writer: Any, config: Any) -> None:
    import gguf

    theta, scaling = _rope(config)
    writer.add_rope_freq_base(theta)
    kind = _rope_type(scaling)
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif kind == "llama3" and HF_ARCHITECTURES[config.model_type] == "llama":
        pass  # a rope_freqs tensor (extra_tensors), as llama.cpp's converter writes
    elif kind not in ("default", None):
        raise ValueError(f"config.json ({config.model_type}): rope_type {kind!r} is not "
                         "supported by lowbit's GGUF export (default, linear, and llama3 for "
                         "Llama are)")


def _rope_type(scaling: dict) -> str | None:
    return scaling.get("rope_type", scaling.get("type", "default"))


def extra_tensors(config: Any, arch: str) -> dict[str, np.ndarray]:
    """Tensors llama.cpp reads that a transformers model does not hold: Llama-3's
    ``rope_freqs.weight``, the factor each rotary frequency is divided by."""
    theta, s = _rope(config)
    if arch != "llama" or _rope_type(s) != "llama3":
        return {}
    head_dim = _head_dim(config)
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    factor, old = float(s["factor"]), float(s["original_max_position_embeddings"])
    low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    wavelen = 2 * np.pi / freqs
    smooth = (old / wavelen - low) / (high - low)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < old / high, 1.0, np.where(wavelen > old / low, factor, mid))
    return {"rope_freqs.weight": out.astype(np.float32)}


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _check_gemma3(config: Any) -> None:
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        want = ["full_attention" if (i + 1) % GEMMA3_SWA_PATTERN == 0 else "sliding_attention"
                for i in range(config.num_hidden_layers)]
        if list(layer_types) != want:
            raise ValueError("config.json (gemma3): layer_types differ from llama.cpp's fixed "
                             f"pattern (every {GEMMA3_SWA_PATTERN}th layer global)")
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(config, key, None) is not None:
            raise ValueError(f"config.json (gemma3): {key} is set; llama.cpp's gemma3 has none")


def write_hyperparameters(writer: Any, config: Any, arch: str) -> None:
    """Add general.* and ``{arch}.*`` hyperparameter keys of `config` to a GGUFWriter."""
    name = getattr(config, "_name_or_path", None) or getattr(config, "_model_name_or_path", None)
    if name:
        writer.add_name(Path(str(name)).name)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    writer.add_head_count_kv(int(kv))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    head_dim = _head_dim(config)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    _rope_keys(writer, config)
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
        writer.add_vocab_size(int(config.vocab_size))
        if getattr(config, "sliding_window", None):  # Mistral: llama.cpp's llama attends fully
            log.warning("config.json: sliding_window=%s is not written; llama.cpp's llama runs "
                        "full attention (the same below that context length)",
                        config.sliding_window)
    if arch == "qwen2" and getattr(config, "use_sliding_window", False):
        raise ValueError("config.json (qwen2): use_sliding_window=true is not supported by "
                         "llama.cpp's qwen2")
    if arch == "gemma3":
        _check_gemma3(config)
        writer.add_sliding_window(int(config.sliding_window))


def hf_vocab(folder: Path, config: Any) -> Vocab:
    """The tokenizer of `folder` for the model `config` (rows padded to its vocab_size)."""
    return read_vocab(folder, int(config.vocab_size))

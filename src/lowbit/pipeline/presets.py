"""llama.cpp's presets (``q4_k_m``, ``q3_k_s``, ...) as plans: the ggml type llama.cpp's
quantizer gives each tensor, by the rules `lowbit.export.gguf_types` reproduces for export.

The plan covers every Linear and the input embedding (a tied output head takes the
embedding's type, as llama.cpp stores one ``token_embd`` for both). Quantizing a model with it
gives llama.cpp's blocks byte for byte, and the checkpoint exports to GGUF without
requantizing. Norms stay in float, as in llama.cpp's files.
"""

from __future__ import annotations

from torch import nn

from lowbit.core.scheme import GGML_FORMATS, Scheme
from lowbit.export import gguf_metadata as meta
from lowbit.export.gguf_types import PRESETS, TensorSlot, check_preset, preset_type
from lowbit.pipeline.embeddings import embedding_names
from lowbit.pipeline.tensor_plan import TensorPlan

#: presets that are a mix of types (the uniform ones are also plain schemes: q8_0, q4_k, ...)
PLAN_PRESETS = tuple(p.lower() for p in PRESETS if p not in ("F32", "F16", "BF16"))


def is_preset(name: str) -> bool:
    """Whether ``name`` is a llama.cpp preset lowbit plans (case-insensitive)."""
    return str(name).lower() in PLAN_PRESETS


def _scheme(gguf_type: str) -> Scheme | None:
    """The ggml scheme of a GGUF type; None for a float type (the tensor is kept)."""
    return Scheme.parse(gguf_type) if gguf_type.lower() in GGML_FORMATS else None


def preset_plan(model: nn.Module, preset: str) -> TensorPlan:
    """The plan llama.cpp's ``preset`` (``q4_k_m``) makes for ``model`` (llama or gemma3)."""
    preset = check_preset(preset)
    config = model.config
    arch, n_layers = meta.gguf_arch(config), config.num_hidden_layers
    emb_name, head = embedding_names(model)

    def type_of(hf_name: str, shape: tuple[int, int]) -> Scheme | None:
        g = meta.gguf_name(hf_name, arch, n_layers)
        if g is None:
            raise ValueError(f"preset {preset}: no GGUF name for {hf_name} ({arch})")
        slot = TensorSlot(g, shape[1], 2, meta.layer_index(g))
        return _scheme(preset_type(slot, preset, n_layer=n_layers, n_gqa=meta.n_gqa(config),
                                   tied_output=head is not None))

    emb = model.get_submodule(emb_name).weight
    embedding = type_of(emb_name + ".weight", tuple(emb.shape))
    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name != head:
            scheme = type_of(name + ".weight", (m.out_features, m.in_features))
            if scheme is not None:
                layers[name] = scheme
    if head is not None and embedding is not None:
        layers[head] = embedding
    return TensorPlan(layers=layers, embedding=embedding, name=preset.lower(),
                      details={"preset": preset, "rules": "llama.cpp llama_tensor_get_type"})

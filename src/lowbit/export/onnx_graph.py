"""The float ONNX decoder from onnxruntime-genai's model builder, and lowbit's changes to it.

The builder writes the graph ORT users already run (GroupQueryAttention with a KV cache,
RotaryEmbedding, SkipSimplifiedLayerNormalization; ``genai_config.json`` for
``onnxruntime_genai``) from a Hugging Face folder. lowbit builds it in fp32 for the CPU with
Q/K/V kept apart (one MatMul per Linear), then swaps each quantized Linear's MatMul for
MatMulNBits or DequantizeLinear + MatMul holding its codes (:mod:`lowbit.export.onnx_pack`).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from lowbit.core.qtensor import QTensor
from lowbit.export.onnx_pack import QuantInit, quant_init

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                 "Gemma3ForCausalLM")


def check_architecture(config: Any, source: str) -> str:
    """The model's architecture if the exporter builds it; else a ValueError naming it."""
    arch = (getattr(config, "architectures", None) or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise ValueError(f"{source}: ONNX export builds {', '.join(ARCHITECTURES)}; "
                         f"{arch} is not supported")
    return arch


def _builder():
    """onnxruntime-genai's builder module (its package expects its folder on sys.path)."""
    import onnxruntime_genai.models as models

    folder = os.path.dirname(models.__file__)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    from onnxruntime_genai.models import builder

    return builder


def _fix_config(config: Any) -> None:
    """transformers 5 nests Gemma-3's RoPE by layer type; the builder reads the flat names."""
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "full_attention" in rope:
        config.rope_theta = rope["full_attention"]["rope_theta"]
        config.rope_local_base_freq = rope["sliding_attention"]["rope_theta"]
        config.rope_parameters = dict(rope["full_attention"])


def build_float(hf_folder: Path, out: Path, cache: Path) -> None:
    """Run the model builder (fp32, CPU, unfused Q/K/V) on ``hf_folder`` into ``out``."""
    b = _builder()
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        opts = b.parse_extra_options(None, str(hf_folder), str(out), "fp32", "cpu", str(cache),
                                     ["fuse_qkv=false"])
        _fix_config(opts["hf_details"]["hf_config"])
        b.create_model(None, str(hf_folder), str(out), "fp32", "cpu", str(cache), **opts)


def node_name(module: str) -> str:
    """The builder's MatMul node for lowbit's Linear ``module`` (HF name)."""
    if module == "lm_head":
        return "/lm_head/MatMul"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)", module)
    if m is None:
        raise ValueError(f"{module}: no MatMul of the ONNX decoder corresponds to this Linear")
    part = "attn" if m.group(2) == "self_attn" else "mlp"
    return f"/model/layers.{m.group(1)}/{part}/{m.group(3)}/MatMul"


def fix_embed_scale(model: onnx.ModelProto, hidden: int) -> bool:
    """Gemma scales embeddings by sqrt(hidden); the builder writes it rounded to 2 decimals
    (25.3 for 25.298...). Put float32(sqrt(hidden)) back, as transformers computes it."""
    for node in model.graph.node:
        if node.name == "/model/embed_tokens/Mul":
            name = "lowbit.embed_scale"
            value = np.asarray(math.sqrt(hidden), dtype=np.float32)
            model.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
            rounded, node.input[1] = node.input[1], name
            if not any(rounded in n.input for n in model.graph.node):
                unused = [t for t in model.graph.initializer if t.name == rounded]
                for t in unused:
                    model.graph.initializer.remove(t)
            return True
    return False


class GraphEditor:
    """Replace MatMul nodes of a loaded model by quantized ones; :meth:`finish` rewrites the
    node list once and drops the float weights no node reads any more."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.nodes = {n.name: n for n in model.graph.node}
        self.inits = {t.name: t for t in model.graph.initializer}
        self.replaced: dict[str, list[onnx.NodeProto]] = {}

    def float_weight(self, module: str) -> np.ndarray:
        """The (in, out) float weight the builder wrote for ``module``."""
        return onnx.numpy_helper.to_array(self.inits[self._node(module).input[1]])

    def _node(self, module: str) -> onnx.NodeProto:
        name = node_name(module)
        node = self.nodes.get(name)
        if node is None or node.op_type != "MatMul" or node.input[1] not in self.inits:
            raise ValueError(f"{module}: the ONNX decoder has no MatMul {name} with a weight")
        return node

    def replace(self, module: str, qt: QTensor) -> str:
        """Swap ``module``'s MatMul for its quantized form; returns the operator used."""
        node = self._node(module)
        q = quant_init(qt, module)
        x = node.input[0]
        new: list[onnx.NodeProto] = []
        if qt.perm is not None:  # stored column k is column perm[k]: gather x's columns
            perm = onnx.numpy_helper.from_array(qt.perm.numpy().astype(np.int64), f"{module}.perm")
            self.model.graph.initializer.append(perm)
            new.append(helper.make_node("Gather", [x, perm.name], [f"{node.name}/perm_x"],
                                        name=f"{node.name}/Perm", axis=-1))
            x = new[-1].output[0]
        new += self._quant_nodes(node, q, x)
        self.model.graph.initializer.extend(q.tensors.values())
        self.replaced[node.name] = new
        return q.op

    def _quant_nodes(self, node: onnx.NodeProto, q: QuantInit, x: str) -> list[onnx.NodeProto]:
        out = node.output[0]
        t = q.tensors
        if q.op == "MatMulNBits":
            inputs = [x, t["B"].name, t["scales"].name]
            if "zero_points" in t:
                inputs.append(t["zero_points"].name)
            return [helper.make_node("MatMulNBits", inputs, [out], name=node.name,
                                     domain="com.microsoft", accuracy_level=0, **q.attrs)]
        inputs = [t["x"].name, t["scale"].name]
        if "zero_point" in t:
            inputs.append(t["zero_point"].name)
        w = f"{node.name}/dequantized"
        return [helper.make_node("DequantizeLinear", inputs, [w], name=f"{node.name}/Dequantize",
                                 **q.attrs),
                helper.make_node("MatMul", [x, w], [out], name=node.name)]

    def finish(self) -> None:
        """Put the new nodes in place of the old ones and drop unread float weights (a tied
        embedding's table stays while its Gather reads it)."""
        old = list(self.model.graph.node)
        nodes = [m for n in old for m in self.replaced.get(n.name, [n])]
        del self.model.graph.node[:]
        self.model.graph.node.extend(nodes)
        used = {i for n in nodes for i in n.input}
        keep = [t for t in self.model.graph.initializer if t.name in used]
        del self.model.graph.initializer[:]
        self.model.graph.initializer.extend(keep)

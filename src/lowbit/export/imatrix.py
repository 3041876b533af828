"""Measure an importance matrix for llama.cpp: what `llama-imatrix` records, from lowbit's own
forward passes of the unquantized model.

For every Linear inside the decoder blocks, the sum over the calibration tokens of each input
column's x^2 and the token count, under the weight's GGUF name (`blk.3.ffn_down.weight`).
llama-imatrix records the matrix multiplications whose weight name starts with `blk.`, plus
`output.weight` only with `--process-output`; a head tied to the token embeddings is
`token_embd.weight` in llama.cpp and is never recorded, so it is not here either.
Each window of the calibration is one chunk (`imatrix.chunk_size` = window length).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import nn

from lowbit.calibration import Calibration, calibrate_sequential
from lowbit.calibration.blocks import find_blocks
from lowbit.calibration.stats import LayerStats
from lowbit.export import gguf_metadata as meta
from lowbit.ggml.imatrix import Imatrix

log = logging.getLogger(__name__)


def _recorded_layers(model: nn.Module, process_output: bool) -> list[str]:
    """Names of the Linears llama-imatrix would record (see the module docstring)."""
    stack = find_blocks(model)
    prefixes = tuple(b + "." for b in stack.names)
    layers = [n for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and n.startswith(prefixes)]
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if process_output and head is not None:
        if embed is not None and head.weight is embed.weight:
            log.warning("the output head is tied to the token embeddings (token_embd.weight in "
                        "llama.cpp), which llama-imatrix never records; leaving it out")
        else:
            layers.append(next(n for n, m in model.named_modules() if m is head))
    return layers


def measure_imatrix(model: nn.Module, calibration: Calibration, *,
                    datasets: Sequence[str] = (), process_output: bool = False,
                    progress: bool = True) -> Imatrix:
    """Run `calibration` through the float `model` block by block and return the importance
    matrix llama-imatrix would write for it (GGUF names, raw sums of x^2, token counts).
    `datasets` names the calibration texts (recorded in the file as llama-imatrix does)."""
    config = model.config
    arch = meta.gguf_arch(config)
    n_layers = config.num_hidden_layers
    layers = _recorded_layers(model, process_output)
    names = {}
    for hf in layers:
        g = meta.gguf_name(f"{hf}.weight", arch, n_layers)
        if g is None:
            raise ValueError(f"{hf}: no GGUF tensor name for this layer ({arch})")
        names[hf] = g
    found: dict[str, LayerStats] = {}
    calibrate_sequential(model, layers, calibration, needs={"x2_mean"},
                         on_block=found.update, progress=progress)
    sums = {names[hf]: (s.x2_mean * s.n_tokens).cpu().numpy() for hf, s in found.items()}
    tokens = {names[hf]: s.n_tokens for hf, s in found.items()}
    windows, length = calibration.tokens.shape
    return Imatrix.from_sums(sums, tokens, chunk_size=int(length), chunk_count=int(windows),
                             datasets=list(datasets) or [calibration.source])

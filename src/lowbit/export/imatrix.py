"""Measure an importance matrix for llama.cpp: what `llama-imatrix` records, from lowbit's own
forward passes of the unquantized model.

For every Linear inside the decoder blocks, the sum over the calibration tokens of each input
column's x^2 and the token count, under the weight's GGUF name (`blk.3.ffn_down.weight`).
llama-imatrix records the matrix multiplications whose weight name starts with `blk.`, plus
`output.weight` only with `--process-output`; a head tied to the token embeddings is
`token_embd.weight` in llama.cpp and is never recorded, so it is not here either.
Each window of the calibration is one chunk (`imatrix.chunk_size` = window length). The blocks'
inputs are captured and each block run once per batch with hooks (the pieces of
`lowbit.calibration`'s sequential calibration; nothing is quantized, so one pass serves both).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from lowbit.calibration import Calibration
from lowbit.calibration.blocks import BlockStack, capture_inputs, find_blocks, run_block
from lowbit.calibration.stats import LayerStats, StatsAccumulator, collect_stats
from lowbit.export import gguf_metadata as meta
from lowbit.ggml.imatrix import Imatrix

log = logging.getLogger(__name__)


def _recorded_layers(model: nn.Module, stack: BlockStack, process_output: bool
                     ) -> tuple[list[list[str]], str | None]:
    """The Linears llama-imatrix would record, per block, and the output head's name or None
    (see the module docstring)."""
    groups = [[f"{b}.{n}" for n, m in block.named_modules() if isinstance(m, nn.Linear)]
              for b, block in zip(stack.names, stack.blocks, strict=True)]
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if not process_output or head is None:
        return groups, None
    if embed is not None and head.weight is embed.weight:
        log.warning("the output head is tied to the token embeddings (token_embd.weight in "
                    "llama.cpp), which llama-imatrix never records; leaving it out")
        return groups, None
    return groups, next(n for n, m in model.named_modules() if m is head)


def _collect(model: nn.Module, calibration: Calibration, process_output: bool, progress: bool
             ) -> dict[str, LayerStats]:
    """x^2 statistics of the recorded Linears, one pass per block: the model stays float, so
    the pass that feeds the hooks also gives the next block its inputs."""
    from tqdm import tqdm

    stack = find_blocks(model)
    groups, head = _recorded_layers(model, stack, process_output)
    if not any(groups):
        raise ValueError(f"{type(model).__name__} has no float Linear layers in its blocks; an "
                         "importance matrix is measured on the unquantized model (not a "
                         "quantized checkpoint)")
    inputs = capture_inputs(model, stack, calibration.batches())
    found: dict[str, LayerStats] = {}
    for i, block in enumerate(tqdm(stack.blocks, desc="imatrix", unit="block",
                                   disable=not progress)):
        with collect_stats({n: model.get_submodule(n) for n in groups[i]}, {"x2_mean"}) as accs:
            for b, hidden in enumerate(inputs.hidden):
                inputs.hidden[b] = run_block(block, hidden, inputs.args[b][i],
                                             inputs.kwargs[b][i])
        found.update({n: acc.result() for n, acc in accs.items()})
    if head is not None:
        if stack.norm is None:
            raise ValueError(f"{type(model).__name__} has no final norm before its output head")
        acc = StatsAccumulator(model.get_submodule(head).weight.shape[1], {"x2_mean"},
                               device=inputs.hidden[0].device)
        with torch.no_grad():
            for hidden in inputs.hidden:
                acc.add(stack.norm(hidden))
        found[head] = acc.result()
    return found


def measure_imatrix(model: nn.Module, calibration: Calibration, *,
                    datasets: Sequence[str] = (), process_output: bool = False,
                    progress: bool = True) -> Imatrix:
    """Run `calibration` through the float `model` block by block and return the importance
    matrix llama-imatrix would write for it (GGUF names, raw sums of x^2, token counts).
    `datasets` names the calibration texts (recorded in the file as llama-imatrix does)."""
    if not isinstance(calibration, Calibration):
        raise TypeError("calibration must be a lowbit.calibration.Calibration, got "
                        f"{type(calibration).__name__}")
    config = model.config
    arch = meta.gguf_arch(config)
    found = _collect(model, calibration, process_output, progress)
    names = {}
    for hf in found:
        g = meta.gguf_name(f"{hf}.weight", arch, config.num_hidden_layers)
        if g is None:
            raise ValueError(f"{hf}: no GGUF tensor name for this layer ({arch})")
        names[hf] = g
    sums = {names[hf]: (s.x2_mean * s.n_tokens).cpu().numpy() for hf, s in found.items()}
    tokens = {names[hf]: s.n_tokens for hf, s in found.items()}
    windows, length = calibration.tokens.shape
    return Imatrix.from_sums(sums, tokens, chunk_size=int(length), chunk_count=int(windows),
                             datasets=list(datasets) or [calibration.source])

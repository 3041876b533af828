"""Block-by-block calibration: collect a block's statistics, quantize it, move on.

For block 0..n-1 in order: run the calibration hidden states through the (still float) block
with hooks on its planned Linears, hand their statistics to ``on_block`` (which quantizes them,
replacing the Linears inside the block), then run the same hidden states through the now
quantized block to get the next block's inputs. So each block is calibrated on what the
already-quantized blocks before it produce, as GPTQ-style methods expect. (Inside a block all
Linears are measured before any is quantized.)

Memory: the model's weights as they are, plus one set of hidden states (windows x length x
hidden, replaced batch by batch as they pass through a block), one block's intermediate
activations for one batch, and the statistics of one block's Linears at a time.

Planned layers outside the blocks may only be the output head: its statistics come from the
final hidden states passed through the model's final norm (the head itself is not run).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn

from lowbit.calibration.blocks import (
    BlockInputs,
    BlockStack,
    capture_inputs,
    find_blocks,
    run_block,
)
from lowbit.calibration.stats import LayerStats, StatsAccumulator, collect_stats
from lowbit.calibration.windows import Calibration
from lowbit.core.module_tree import is_output_head

log = logging.getLogger(__name__)

OnBlock = Callable[[dict[str, LayerStats]], None]
# (block, block name, its Linears' statistics) -> whether it changed the block
Prepare = Callable[[nn.Module, str, dict[str, LayerStats]], bool]


def _group_by_block(stack: BlockStack, layers: Iterable[str]
                    ) -> tuple[list[list[str]], list[str]]:
    """The planned layer names of each block, and those outside every block (head only)."""
    groups: list[list[str]] = [[] for _ in stack.names]
    outside: list[str] = []
    for name in layers:
        index = next((i for i, b in enumerate(stack.names) if name.startswith(b + ".")), None)
        if index is not None:
            groups[index].append(name)
        elif is_output_head(name) and stack.norm is not None:
            outside.append(name)
        else:
            raise ValueError(f"layer {name!r} is outside the decoder blocks and is not the "
                             "output head; sequential calibration cannot give it statistics "
                             "(exclude it, or use a method that needs no data)")
    return groups, outside


def _block_stats(model: nn.Module, names: list[str], block: nn.Module, inputs: BlockInputs,
                 index: int, needs: frozenset[str]) -> dict[str, LayerStats]:
    layers = {n: model.get_submodule(n) for n in names}
    with collect_stats(layers, needs) as accs:
        for b, hidden in enumerate(inputs.hidden):
            run_block(block, hidden, inputs.args[b][index], inputs.kwargs[b][index])
    return {n: acc.result() for n, acc in accs.items()}


def _head_stats(model: nn.Module, names: list[str], norm: nn.Module, inputs: BlockInputs,
                needs: frozenset[str]) -> dict[str, LayerStats]:
    stats = {}
    for name in names:
        acc = StatsAccumulator(model.get_submodule(name).weight.shape[1], needs,
                               device=inputs.hidden[0].device)
        with torch.no_grad():
            for hidden in inputs.hidden:
                acc.add(norm(hidden))
        stats[name] = acc.result()
    return stats


def calibrate_sequential(model: nn.Module, layers: Iterable[str], calibration: Calibration,
                         *, needs: Iterable[str], on_block: OnBlock,
                         prepare: Prepare | None = None, progress: bool = True) -> None:
    """Calibrate and quantize ``model`` block by block (see the module docstring).

    ``layers``: the names of the Linears to quantize; ``needs``: the statistics to collect;
    ``on_block(stats)`` is called once per block that holds planned layers (then once for the
    output head, when planned), with those layers' statistics, and must quantize them.
    ``prepare(block, name, stats)``, when given, runs first on each such block (a method's block
    step); when it returns True the block's statistics are collected again."""
    from tqdm import tqdm

    if not isinstance(calibration, Calibration):
        raise TypeError("calibration must be a lowbit.calibration.Calibration (e.g. Calibration"
                        f".from_text(tokenizer, text)), got {type(calibration).__name__}")
    needs = frozenset(needs)
    stack = find_blocks(model)
    groups, outside = _group_by_block(stack, layers)
    inputs = capture_inputs(model, stack, calibration.batches())
    log.info("calibrating %d blocks on %d tokens (%s)", len(stack.blocks), calibration.n_tokens,
             calibration.source)
    for i, block in enumerate(tqdm(stack.blocks, desc="calibrate", unit="block",
                                   disable=not progress)):
        if groups[i]:
            stats = _block_stats(model, groups[i], block, inputs, i, needs)
            if prepare is not None and prepare(block, stack.names[i], stats):
                stats = _block_stats(model, groups[i], block, inputs, i, needs)
            on_block(stats)
        for b in range(len(inputs.hidden)):
            inputs.hidden[b] = run_block(block, inputs.hidden[b], inputs.args[b][i],
                                         inputs.kwargs[b][i])
    if outside:
        on_block(_head_stats(model, outside, stack.norm, inputs, needs))

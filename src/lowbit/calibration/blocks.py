"""A decoder model as a stack of blocks: where the blocks are, and what each one is called with.

Sequential calibration runs one block at a time, so it needs each block's inputs outside the
model's own forward. The model prepares per-block arguments itself (attention masks, rotary
position embeddings; Gemma-3 gives sliding-window and global layers different ones), so they are
captured rather than rebuilt: every block is swapped for a stand-in that records the arguments it
is called with and passes the hidden states through unchanged, one forward pass per batch is run,
and the last stand-in stops it (so the output head never runs). Only the first block's hidden
states are kept; the others' would be the embeddings again.

Handles transformers decoder models whose ``get_decoder()`` has ``layers`` (a ModuleList of
blocks) and ``norm`` (the final norm): Llama, Gemma-3, Qwen, Mistral, Phi-3 and their kin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class BlockStack:
    """The blocks of a decoder model, their module names, and the final norm."""

    blocks: nn.ModuleList
    names: list[str]
    norm: nn.Module | None


def find_blocks(model: nn.Module) -> BlockStack:
    """The decoder blocks of a transformers causal LM; ValueError for other models."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    blocks = getattr(decoder, "layers", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}: "
                         "sequential calibration handles transformers decoder models whose "
                         "get_decoder() has a ModuleList 'layers' (Llama, Gemma-3, ...)")
    where = {id(m): n for n, m in model.named_modules()}
    names = [where[id(b)] for b in blocks]
    return BlockStack(blocks, names, getattr(decoder, "norm", None))


class _Stop(Exception):
    """Raised by the last stand-in: the rest of the forward pass is not needed."""


class _StandIn(nn.Module):
    """Records the arguments a block is called with and returns its hidden states unchanged."""

    def __init__(self, index: int, last: bool, record: list) -> None:
        super().__init__()
        self.index, self.last, self.record = index, last, record

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        self.record.append((hidden if self.index == 0 else None, args[1:], kwargs))
        if self.last:
            raise _Stop
        return hidden


@dataclass
class BlockInputs:
    """Per calibration batch: the hidden states entering the current block, and the extra
    positional and keyword arguments of every block (shared tensors, not copies)."""

    hidden: list[torch.Tensor]
    args: list[list[tuple]]  # [batch][block]
    kwargs: list[list[dict[str, Any]]]  # [batch][block]


def capture_inputs(model: nn.Module, stack: BlockStack, batches: list[torch.Tensor]
                   ) -> BlockInputs:
    """Run each batch of token ids into the model up to the blocks; see the module docstring."""
    from lowbit.eval.perplexity import model_device

    device = model_device(model)
    originals = list(stack.blocks)
    out = BlockInputs([], [], [])
    try:
        for ids in batches:
            record: list = []
            for i in range(len(originals)):
                stack.blocks[i] = _StandIn(i, i == len(originals) - 1, record)
            try:
                with torch.no_grad():
                    model(input_ids=ids.to(device), use_cache=False)
            except _Stop:
                pass
            if len(record) != len(originals):
                raise ValueError(f"{type(model).__name__} called {len(record)} of its "
                                 f"{len(originals)} blocks; sequential calibration needs every "
                                 "block called once per forward pass")
            out.hidden.append(record[0][0])
            out.args.append([r[1] for r in record])
            out.kwargs.append([r[2] for r in record])
    finally:
        for i, block in enumerate(originals):
            stack.blocks[i] = block
    return out


def run_block(block: nn.Module, hidden: torch.Tensor, args: tuple, kwargs: dict[str, Any]
              ) -> torch.Tensor:
    """The block's output hidden states (blocks return a tensor or a tuple starting with it)."""
    with torch.no_grad():
        out = block(hidden, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out

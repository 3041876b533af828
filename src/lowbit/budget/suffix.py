"""Logits of a model whose change starts at one block: run only the blocks from there on.

Sensitivity changes one tensor at a time, so the hidden states entering every block before it
are those of the float model. They are captured once per calibration batch (with the arguments
each block is called with, :mod:`lowbit.calibration.blocks`); a unit in block ``i`` then costs
blocks ``i..N``, the final norm and the head. The embedding (and a head tied to it) changes the
first input, so it runs the whole model, as does a model that post-processes its logits.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.calibration.blocks import BlockStack, capture_inputs, find_blocks, run_block


class SuffixRunner:
    """Per calibration batch, the float hidden states entering each block; see the module."""

    def __init__(self, model: nn.Module, batches: list[torch.Tensor]) -> None:
        self.model, self.batches = model, batches
        self.stack: BlockStack | None = None
        self.hidden: list[list[torch.Tensor]] = []
        if getattr(model.config, "final_logit_softcapping", None) is not None:
            return  # logits are post-processed after the head: always the whole model
        try:
            stack = find_blocks(model)
        except ValueError:
            return
        inputs = capture_inputs(model, stack, batches)
        self.stack, self.args, self.kwargs = stack, inputs.args, inputs.kwargs
        for b, h in enumerate(inputs.hidden):
            states = [h]
            for i, block in enumerate(stack.blocks):
                states.append(run_block(block, states[-1], self.args[b][i], self.kwargs[b][i]))
            self.hidden.append(states)

    def start(self, modules: list[str]) -> int | None:
        """The first block ``modules`` sit in (len(blocks) for the head), None: whole model."""
        if self.stack is None:
            return None
        emb = self.model.get_input_embeddings()
        if any(self.model.get_submodule(m) is emb for m in modules):
            return None
        found = [i for m in modules for i, n in enumerate(self.stack.names)
                 if m.startswith(n + ".")]
        if len(found) == len(modules):
            return min(found)
        head = self.model.get_output_embeddings()
        if all(self.model.get_submodule(m) is head for m in modules):
            return len(self.stack.blocks)
        return None

    @torch.no_grad()
    def logits(self, start: int | None) -> list[torch.Tensor]:
        """Per batch, logits (tokens, vocab) of the model as it is now, run from ``start``."""
        if start is None:
            return [self.model(b).logits.float().reshape(-1, self.model.config.vocab_size)
                    for b in self.batches]
        out = []
        for b, states in enumerate(self.hidden):
            h = states[start]
            for i in range(start, len(self.stack.blocks)):
                h = run_block(self.stack.blocks[i], h, self.args[b][i], self.kwargs[b][i])
            h = self.stack.norm(h) if self.stack.norm is not None else h
            logits = self.model.get_output_embeddings()(h)
            out.append(logits.float().reshape(-1, logits.shape[-1]))
        return out

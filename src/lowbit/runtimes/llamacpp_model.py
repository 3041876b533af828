"""`LlamaCppModel`: a GGUF opened in llama.cpp, as a torch module whose forward returns the logits
llama.cpp computes, so `lowbit.eval.perplexity` / `divergence` score llama.cpp and a Hugging Face
model on exactly the same windows and token ids.
"""

from __future__ import annotations

import os
from typing import Any

import torch


class LlamaCppModel(torch.nn.Module):
    """A GGUF in llama.cpp, callable like a causal LM: ``model(ids[1, n]) -> logits[1, n, V]``."""

    def __init__(self, path: str | os.PathLike, n_ctx: int = 512, threads: int = 1) -> None:
        super().__init__()
        from lowbit.runtimes.llamacpp import LlamaCpp

        self.llm = LlamaCpp(path, n_ctx=n_ctx, threads=threads)
        self.eval()  # inference only: llama.cpp has no training mode

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.ndim != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"LlamaCppModel takes one sequence [1, n], got "
                             f"{tuple(input_ids.shape)}")
        logits = self.llm.logits(input_ids[0].tolist())
        return torch.from_numpy(logits).unsqueeze(0)

    def close(self) -> None:
        self.llm.close()

    def __enter__(self) -> LlamaCppModel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

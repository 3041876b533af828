"""A plain transcription of AWQ's scale search on explicit activations (Lin et al., 2023,
section 3.2): for each α, ``s = mean_t |x_t|^α`` ... here the RMS (lowbit's choice, see
lowbit.methods.awq), normalised, and the output error ``‖(W - Q(W·s)/s) Xᵀ‖²/N`` summed over the
Linears, in float64, one α and one Linear at a time."""

from __future__ import annotations

import torch

from lowbit.methods.rtn import quantize_rtn


def reference_search(weights: list[torch.Tensor], schemes: list[str], x: torch.Tensor,
                     grid: int) -> tuple[float, list[float]]:
    """(the α of least error, the error at every α) for Linears sharing the inputs ``x``."""
    x = x.double()
    rms = x.pow(2).mean(0).sqrt()
    losses = []
    for i in range(grid + 1):
        alpha = i / grid
        s = torch.clamp(rms ** alpha, min=1e-4)
        s = s / torch.sqrt(s.max() * s.min())
        total = 0.0
        for w, scheme in zip(weights, schemes):
            scaled = (w.double() * s).float()
            q = quantize_rtn(scaled, scheme).dequantize().double() / s
            err = (w.double() - q) @ x.T
            total += float(err.pow(2).sum()) / x.shape[0]
        losses.append(total)
    best = min(range(grid + 1), key=lambda i: (losses[i], i))
    return best / grid, losses

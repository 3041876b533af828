"""The fast encoders (bit arithmetic for minifloats, a cell table for codebooks) must give exactly
the codes of the plain reference encoders (nearest grid value by search)."""

from __future__ import annotations

import pytest
import torch

from lowbit.formats import BNB_FP4, FP4_E2M1, FP6_E2M3, FP6_E3M2, FP8_E4M3, FP8_E5M2, NF4


def _probe(thresholds: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Every float16 bit pattern, random float32 of every magnitude, the thresholds themselves
    and their float32 neighbours, and the specials."""
    g = torch.Generator().manual_seed(seed)
    halves = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.float16)
    wide = torch.randn(200_000, generator=g) * torch.exp2(
        torch.randint(-40, 40, (200_000,), generator=g).float())
    up = torch.nextafter(thresholds, torch.tensor(float("inf")))
    down = torch.nextafter(thresholds, torch.tensor(-float("inf")))
    near = torch.cat([thresholds, up, down])
    specials = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 3.4e38, -3.4e38, 1e-45])
    return torch.cat([halves.float(), wide, near, -near, specials])


@pytest.mark.parametrize("fmt", [FP8_E4M3, FP8_E5M2, FP6_E2M3, FP6_E3M2, FP4_E2M1],
                         ids=lambda f: f.name)
@pytest.mark.parametrize("saturate", [True, False])
def test_minifloat_fast_equals_reference(fmt, saturate: bool) -> None:
    x = _probe(fmt._grid[0])
    if not fmt.has_nan:  # both raise on NaN; tested elsewhere
        x = x[~torch.isnan(x)]
    assert torch.equal(fmt.encode(x, saturate=saturate),
                       fmt.encode_reference(x, saturate=saturate))


def test_minifloat_fast_keeps_nan() -> None:
    x = torch.tensor([float("nan"), -float("nan"), 1.0])
    for fmt in (FP8_E4M3, FP8_E5M2):
        assert torch.equal(fmt.encode(x), fmt.encode_reference(x))


@pytest.mark.parametrize("fmt", [NF4, BNB_FP4], ids=lambda f: f.name)
def test_codebook_fast_equals_reference(fmt) -> None:
    x = _probe(fmt._sorted[2])
    x = x[torch.isfinite(x)]
    assert torch.equal(fmt.encode(x), fmt.encode_reference(x))

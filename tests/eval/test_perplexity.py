import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from evaltoys import BOS, VOCAB, BigramModel, CharTokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.eval import make_windows, perplexity, plan_windows, tokenize

# float64 scoring vs float32 cross_entropy of the same logits: relative error of a mean of a few
# hundred float32 log-probabilities is ~1e-7; 1e-5 leaves room.
REL = 1e-5


def test_one_window_matches_full_sequence_cross_entropy(tiny_llama, tokenizer, text):
    ids = tokenize(tokenizer, text)
    windows = plan_windows(ids, context=len(ids) + 10, stride=len(ids), bos_id=BOS)
    assert len(windows) == 1
    result = perplexity(tiny_llama, windows, progress=False)
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = tiny_llama(x).logits[0]
    nll = F.cross_entropy(logits[:-1], x[0, 1:])
    assert result.n_scored == len(ids) - 1
    assert result.mean_nll == pytest.approx(float(nll), rel=REL)
    assert result.perplexity == pytest.approx(math.exp(float(nll)), rel=REL)
    assert result.perplexity == pytest.approx(math.exp(result.mean_nll), rel=1e-12)


def test_llamacpp_scheme_matches_naive_chunks(tiny_llama, tokenizer, text):
    """Chunks of n_ctx, BOS over each chunk's first token, second half scored (llama-perplexity)."""
    n_ctx = 32
    windows = make_windows(tokenizer, text, context=n_ctx)
    ids = tokenize(tokenizer, text)
    total, count = 0.0, 0
    for start in range(0, len(ids) - n_ctx + 1, n_ctx):
        chunk = torch.tensor([[BOS] + ids[start + 1 : start + n_ctx]])
        with torch.no_grad():
            logits = tiny_llama(chunk).logits[0]
        first = n_ctx // 2
        total += float(F.cross_entropy(logits[first:-1], chunk[0, first + 1 :], reduction="sum"))
        count += n_ctx - 1 - first
    result = perplexity(tiny_llama, windows, progress=False)
    assert result.n_scored == count == (len(ids) // n_ctx) * (n_ctx - 1 - n_ctx // 2)
    assert result.mean_nll == pytest.approx(total / count, rel=REL)


def bigram_reference(table: torch.Tensor, ids: list[int], targets: list[int]) -> float:
    """Mean NLL of each target under a bigram table, straight from the token stream."""
    logp = torch.log_softmax(table.double(), dim=-1)
    return sum(-float(logp[ids[t - 1], ids[t]]) for t in targets) / len(targets)


@pytest.mark.parametrize("stride", [None, 5, 15])
def test_bigram_model_scores_the_planned_tokens(text, stride):
    """With logits we control, the NLL is that of exactly the tokens the plan says it scores."""
    table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(0)) * 3
    tok = CharTokenizer(add_bos=False)
    windows = make_windows(tok, text, context=16, stride=stride)
    assert windows.bos_id is None
    ids = tok.encode(text, add_special_tokens=False)
    targets = [t for w in windows.windows for t in range(w.first_target, w.end)]
    result = perplexity(BigramModel(table).eval(), windows, progress=False)
    assert result.mean_nll == pytest.approx(bigram_reference(table, ids, targets), rel=1e-12)


def test_bos_written_over_every_window(text, tokenizer):
    windows = make_windows(tokenizer, text, context=20, stride=12)
    assert windows.tokens[0] == BOS
    for i, w in enumerate(windows.windows):
        ids = windows.input_ids(i)
        assert ids[0, 0] == BOS
        assert torch.equal(ids[0, 1:], windows.tokens[w.start + 1 : w.end])
        assert w.first_target > w.start  # the overwritten position is never a target


def test_no_bos_when_tokenizer_adds_none(text):
    windows = make_windows(CharTokenizer(add_bos=False), text, context=20)
    assert windows.bos_id is None and windows.tokens[0] != BOS
    assert torch.equal(windows.input_ids(1)[0], windows.tokens[20:40])


def test_max_tokens_cuts_the_stream(tokenizer, text):
    windows = make_windows(tokenizer, text, context=16, max_tokens=50)
    assert windows.tokens.numel() == 50
    assert len(windows) == 3  # 50 // 16 windows; the partial tail is dropped like llama.cpp
    assert windows.describe()["n_scored"] == 3 * (16 - 1 - 8)


@given(n=st.integers(2, 300), context=st.integers(2, 64), data=st.data())
@settings(max_examples=200, deadline=None)
def test_sliding_scores_every_token_once(n, context, data):
    stride = data.draw(st.integers(1, context - 1))
    windows = plan_windows(list(range(n)), context, stride=stride)
    counts = Counter(t for w in windows.windows for t in range(w.first_target, w.end))
    assert counts == Counter(range(1, n))  # every token but the first, exactly once
    for w in windows.windows:
        assert 0 < w.end - w.start <= context
        assert w.start < w.first_target <= w.end
        # every target sees at least context - stride tokens of its window before it
        assert all(t - w.start >= min(t, context - stride) for t in range(w.first_target, w.end))
    assert windows.n_scored == n - 1


@given(n=st.integers(3, 300), context=st.integers(3, 64))
@settings(max_examples=200, deadline=None)
def test_llamacpp_windows_disjoint_second_half(n, context):
    if n < context:
        with pytest.raises(ValueError, match="fewer than one window"):
            plan_windows(list(range(n)), context)
        return
    windows = plan_windows(list(range(n)), context)
    assert len(windows) == n // context
    for k, w in enumerate(windows.windows):
        assert (w.start, w.end) == (k * context, (k + 1) * context)
        assert w.first_target - w.start == context // 2 + 1
    counts = Counter(t for w in windows.windows for t in range(w.first_target, w.end))
    assert max(counts.values()) == 1


@pytest.mark.parametrize(
    ("context", "stride", "match"),
    [(16, 16, "stride must satisfy"), (16, 0, "stride must satisfy"), (2, None, "at least 3")],
)
def test_plan_rejects_bad_options(context, stride, match):
    with pytest.raises(ValueError, match=match):
        plan_windows(list(range(100)), context, stride=stride)


def test_same_plan_reused_across_models(tiny_llama, perturbed_llama, tokenizer, text):
    windows = make_windows(tokenizer, text, context=32)
    a = perplexity(tiny_llama, windows, progress=False)
    b = perplexity(perturbed_llama, windows, progress=False)
    assert a.n_scored == b.n_scored == windows.n_scored
    assert a.plan == b.plan == windows.describe()
    assert a.mean_nll != b.mean_nll


def test_result_json_fields(tiny_llama, tokenizer, text):
    result = perplexity(tiny_llama, make_windows(tokenizer, text, context=32), progress=True)
    d = result.to_dict()
    assert list(d) == ["kind", "perplexity", "mean_nll", "nll_stderr", "ppl_stderr", "n_scored",
                       "seconds", "plan"]
    assert d["plan"]["scheme"] == "llama.cpp" and d["plan"]["bos"] is True
    assert d["ppl_stderr"] > 0

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lowbit.eval import (
    LogitsCache,
    divergence,
    make_windows,
    perplexity,
    save_base_logits,
)


@pytest.fixture
def windows(tokenizer, text):
    return make_windows(tokenizer, text, context=24, stride=10)


def test_model_against_itself(tiny_llama, windows):
    r = divergence(tiny_llama, tiny_llama, windows, progress=False)
    assert r.kld_mean == 0.0 and r.kld_max == 0.0  # identical logits: every log-ratio is exactly 0
    assert r.top1_agreement == 1.0
    assert r.ppl_base == r.ppl_quant
    assert r.n_scored == windows.n_scored == r.kl.size


def naive_kl(base, quant, windows):
    """Full logits of each window, KL over the scored rows with torch's kl_div, float64."""
    kls, same = [], []
    for i, w in enumerate(windows.windows):
        ids = windows.input_ids(i)
        with torch.no_grad():
            lp = F.log_softmax(base(ids).logits[0].double(), -1)[w.logit_rows]
            lq = F.log_softmax(quant(ids).logits[0].double(), -1)[w.logit_rows]
        kls.append(F.kl_div(lq, lp, log_target=True, reduction="none").sum(-1))
        same.append(lp.argmax(-1) == lq.argmax(-1))
    return torch.cat(kls).numpy(), torch.cat(same).numpy()


def test_perturbed_copy_matches_naive(tiny_llama, perturbed_llama, windows):
    r = divergence(tiny_llama, perturbed_llama, windows, progress=False)
    kl, same = naive_kl(tiny_llama, perturbed_llama, windows)
    assert r.kld_mean > 0
    # Both float64 from identical float32 logits; only the summation order differs (~1e-15 rel).
    np.testing.assert_allclose(r.kl, kl, rtol=1e-9, atol=1e-15)
    assert r.top1_agreement == same.mean()
    assert r.kld_median == np.median(kl) or r.kld_median == pytest.approx(np.median(kl), rel=1e-9)
    assert r.kld_p99 == pytest.approx(np.quantile(kl, 0.99), rel=1e-9)
    assert r.kld_max == pytest.approx(kl.max(), rel=1e-9)
    assert r.kld_median <= r.kld_p90 <= r.kld_p95 <= r.kld_p99 <= r.kld_p999 <= r.kld_max


def test_perplexities_from_the_same_pass(tiny_llama, perturbed_llama, windows):
    r = divergence(tiny_llama, perturbed_llama, windows, progress=False)
    a = perplexity(tiny_llama, windows, progress=False)
    b = perplexity(perturbed_llama, windows, progress=False)
    assert r.ppl_base == pytest.approx(a.perplexity, rel=1e-12)  # same float64 sums
    assert r.ppl_quant == pytest.approx(b.perplexity, rel=1e-12)


def test_cached_base_gives_the_same_result(tiny_llama, perturbed_llama, windows, tmp_path):
    cache = save_base_logits(tiny_llama, windows, tmp_path / "base", progress=False)
    a = divergence(cache, perturbed_llama, windows, progress=False)
    b = divergence(tiny_llama, perturbed_llama, windows, progress=False)
    np.testing.assert_array_equal(a.kl, b.kl)
    assert a.to_dict() | {"seconds": 0} == b.to_dict() | {"seconds": 0}


def test_cache_refuses_another_plan(tiny_llama, windows, tokenizer, text, tmp_path):
    save_base_logits(tiny_llama, windows, tmp_path / "base", progress=False)
    other = make_windows(tokenizer, text, context=24, stride=11)
    with pytest.raises(ValueError, match="another token plan"):
        LogitsCache(tmp_path / "base", other)
    with pytest.raises(ValueError, match="plan.txt"):
        LogitsCache(tmp_path / "nothing", windows)


def test_json_fields(tiny_llama, perturbed_llama, windows):
    d = divergence(tiny_llama, perturbed_llama, windows, progress=False).to_dict()
    assert list(d) == [
        "kind", "kld_mean", "kld_stderr", "kld_median", "kld_p90", "kld_p95", "kld_p99",
        "kld_p999", "kld_max", "top1_agreement", "ppl_base", "ppl_quant", "nll_base",
        "nll_quant", "n_scored", "seconds", "plan",
    ]

"""The sweep's fast path (output head on scored rows only, one log-softmax per model for KL and
NLL, choices continuing from the prompt's KV cache) gives the figures of the plain path: every
window's full logits, KL from whole-window float64 log-softmax, NLL by logsumexp, every choice
batch run whole.

Tolerance, derived: both paths compute the same float32 forward; they may differ only by float32
rounding (a matmul over fewer rows may block its sums differently), measured here as ``eps``, the
largest logit difference, itself bounded by 1e-4 (float32's 2^-24 times a few hundred terms per
dot product times logits of order 10, with headroom). A logit perturbation of at most ``eps``
moves a log-softmax entry by at most 2·eps, so each per-token NLL by 2·eps and each per-token KL
by at most 4·eps (``KL = sum p (lp - lq)``, each log term within 2·eps, and ``p`` sums to 1, plus
the same for the change of ``p``); a mean or a quantile of values each within 4·eps moves by at
most 4·eps. Top-1 and choice picks may flip only on near-ties (margins under 4·eps).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from lowbit import kernels
from lowbit.data import choice_path, load_questions
from lowbit.eval import choice as choice_mod
from lowbit.eval.perplexity import token_nll, tokenizer_adds_bos
from lowbit.eval.reference import text_windows
from lowbit.pipeline.inmemory import quantize
from lowbit.report.results import read_records
from lowbit.report.sweep import run_sweep

SCHEME = "int4-asym-g32"
EPS_BOUND = 1e-4


def _full_logits(model, ids):
    return model(ids).logits  # every position, no logits_to_keep


def _slow_texts(base, quant, tok, settings):
    """Per scored token: KL, top-1 equality, both NLLs, top-2 margin; and the largest logit
    difference between the plain forward and the fast path's (head on scored rows only)."""
    kl, same, nb, nq, margin, eps = [], [], [], [], [], 0.0
    for windows in text_windows(tok, settings).values():
        for i, w in enumerate(windows.windows):
            ids = windows.input_ids(i)
            lb = _full_logits(base, ids)[0, w.logit_rows]
            lq = _full_logits(quant, ids)[0, w.logit_rows]
            fast = quant(ids, logits_to_keep=torch.arange(ids.shape[1])[w.logit_rows]).logits[0]
            eps = max(eps, float((fast - lq).abs().max()))
            p, q = torch.log_softmax(lb.double(), -1), torch.log_softmax(lq.double(), -1)
            kl.append((p.exp() * (p - q)).sum(-1).numpy())
            same.append((lb.argmax(-1) == lq.argmax(-1)).numpy())
            nb.append(token_nll(lb, windows.targets(i)).numpy())
            nq.append(token_nll(lq, windows.targets(i)).numpy())
            top2 = lq.double().topk(2, -1).values
            margin.append((top2[:, 0] - top2[:, 1]).numpy())
    return [np.concatenate(x) for x in (kl, same, nb, nq, margin)], eps


def _slow_choice(model, tok, settings):
    """Per question: the sum log-likelihood of each choice with every choice batch run whole,
    each continuation's token count, and the largest difference between those logits and the
    fast path's (prompt once, continuations on its KV cache)."""
    bos = tok.bos_token_id if tokenizer_adds_bos(tok) else None
    out, eps = [], 0.0
    for q in load_questions(choice_path(settings.choice[0]))[: settings.max_questions]:
        seqs, starts = choice_mod._encode_choices(tok, q, choice_mod.DEFAULT_TEMPLATE,
                                                  choice_mod.DEFAULT_SEPARATOR, bos)
        width, first = max(len(s) for s in seqs), min(starts) - 1
        logits = _full_logits(model, torch.tensor([s + [s[0]] * (width - len(s)) for s in seqs]))
        fast = choice_mod._continuation_logits(model, seqs, first, None)
        for j, s in enumerate(seqs):  # rows past a sequence's end are padding, never read
            rows = slice(first, len(s) - 1)
            eps = max(eps, float((fast[j, : len(s) - 1 - first] - logits[j, rows]).abs().max()))
        ll = [-float(token_nll(logits[j, a - 1: len(s) - 1], torch.tensor(s[a:])).sum())
              for j, (s, a) in enumerate(zip(seqs, starts, strict=True))]
        out.append((q, ll, [len(s) - a for s, a in zip(seqs, starts, strict=True)]))
    return out, eps


def _pick(q, ll):
    return max(range(len(ll)), key=lambda k: ll[k] / max(len(q.choices[k]), 1))


@torch.no_grad()
def test_sweep_figures_agree_with_the_plain_path(tiny_llama, data_dir, fast_settings, tmp_path):
    model, tok = tiny_llama
    run_sweep("tiny-llama", [SCHEME], tmp_path / "s", settings=fast_settings, progress=False,
              loaded=tiny_llama, baseline_rows=False)
    rec = read_records(tmp_path / "s" / "results.jsonl")[0]
    quant = copy.deepcopy(model)
    quantize(quant, SCHEME, progress=False)
    kernels.use(quant, "reference")  # the kernel the sweep's quality passes run (eval/suite.py)
    (kl, same, nb, nq, margin), eps = _slow_texts(model, quant, tok, fast_settings)
    assert eps <= EPS_BOUND
    tol = 4 * eps + 1e-12  # 1e-12: float64 rounding of the sums themselves
    s = rec["summary"]
    assert s["n_scored"] == kl.size
    assert abs(s["kld_mean"] - kl.mean()) <= tol
    assert abs(s["kld_p99"] - np.quantile(kl, 0.99)) <= tol
    assert abs(math.log(s["ppl"]) - nq.mean()) <= 2 * eps + 1e-12
    assert abs(math.log(s["ppl_base"]) - nb.mean()) <= 1e-12  # base: the same cached logits
    near_tie = int((margin < 4 * eps).sum())
    assert abs(s["top1_agreement"] * kl.size - same.sum()) <= near_tie
    ch = rec["choice"][fast_settings.choice[0]]
    (base_ll, _), (quant_ll, eps_c) = (_slow_choice(model, tok, fast_settings),
                                       _slow_choice(quant, tok, fast_settings))
    assert eps_c <= EPS_BOUND
    for q, slow, n_tokens in quant_ll:  # each token's log-probability within 2 * eps_c
        fast = choice_mod.choice_logliks(quant, tok, q)
        assert np.all(np.abs(np.subtract(fast, slow)) <= 2 * eps_c * np.array(n_tokens) + 1e-12)
    picks = [_pick(q, ll) for q, ll, _ in quant_ll]
    for q, ll, n_tokens in quant_ll:  # no near-tie, so the picks must be equal
        norm = sorted(v / max(len(c), 1) for v, c in zip(ll, q.choices, strict=True))
        assert norm[-1] - norm[-2] > 4 * eps_c * max(n_tokens)
    assert ch["picks"] == picks
    answers = [q.answer for q, _, _ in quant_ll]
    assert ch["accuracy"] == np.mean(np.equal(picks, answers))
    assert ch["agreement"] == np.mean(np.equal(picks, [_pick(q, ll) for q, ll, _ in base_ll]))

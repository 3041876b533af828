import json

import pytest
import torch
from evaltoys import VOCAB, BigramModel, CharTokenizer

from lowbit.data import Question
from lowbit.eval import choice_accuracy, choice_logliks, wilson_interval
from lowbit.eval.choice import agreement


def char_id(c: str) -> int:
    return CharTokenizer().encode(c, add_special_tokens=False)[0]


def favouring(c: str) -> BigramModel:
    """A model whose next token is ``c`` with probability ~1 after any token."""
    table = torch.zeros(VOCAB, VOCAB)
    table[:, char_id(c)] = 30.0
    return BigramModel(table).eval()


QUESTIONS = [
    Question("Q1?", ("yy", "xx", "zz"), 1),
    Question("Q2?", ("xxx", "yyy"), 0),
    Question("Q3?", ("ab", "cd", "xx"), 0),  # the model will pick "xx": wrong
    Question("Q4?", ("ab", "cd"), 0),  # no x, no y: every choice scores the same; ties go first
]


def test_forced_answers_and_interval(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(q.__dict__ | {"choices": list(q.choices)}) + "\n"
                            for q in QUESTIONS))
    r = choice_accuracy(favouring("x"), CharTokenizer(), path, progress=False)
    assert r.picks == (1, 0, 2, 0) and r.answers == (1, 0, 0, 0)
    assert r.accuracy == 3 / 4
    assert (r.accuracy_low, r.accuracy_high) == wilson_interval(3, 4)
    assert r.agreement is None


def test_normalised_and_sum_picks_differ_on_a_uniform_model():
    """Uniform logits: every token costs log V, so the sum favours the shortest choice and the
    per-character score (separator token included, over the choice's characters) the longest."""
    model = BigramModel(torch.zeros(VOCAB, VOCAB)).eval()
    qs = [Question("Pick", ("a", "bbbb", "cc"), 1)]
    r = choice_accuracy(model, CharTokenizer(), qs, progress=False)
    assert r.picks == (1,) and r.picks_sum == (0,)
    assert r.accuracy == 1.0 and r.accuracy_sum == 0.0
    assert r.normalisation == "chars"


def test_agreement_with_baseline_model_result_and_picks():
    tok = CharTokenizer()
    base = choice_accuracy(favouring("y"), tok, QUESTIONS, progress=False)
    r = choice_accuracy(favouring("x"), tok, QUESTIONS, baseline=favouring("y"), progress=False)
    assert base.picks == (0, 1, 0, 0)
    assert r.agreement == 1 / 4  # Q4 only
    assert (r.agreement_low, r.agreement_high) == wilson_interval(1, 4)
    assert choice_accuracy(favouring("x"), tok, QUESTIONS, baseline=base,
                           progress=False).agreement == r.agreement
    assert choice_accuracy(favouring("x"), tok, QUESTIONS, baseline=list(base.picks),
                           progress=False).agreement == r.agreement
    same = choice_accuracy(favouring("x"), tok, QUESTIONS, baseline=favouring("x"), progress=False)
    assert same.agreement == 1.0


def test_batched_choices_equal_one_at_a_time(tiny_llama):
    tok = CharTokenizer()
    q = Question("The sky is", ("blue", "green and yellow", "a"), 0)
    batched = choice_logliks(tiny_llama, tok, q)
    for c, ll in zip(q.choices, batched, strict=True):
        prompt = [1, *tok.encode("The sky is\nAnswer:", add_special_tokens=False)]
        whole = [1, *tok.encode("The sky is\nAnswer: " + c, add_special_tokens=False)]
        with torch.no_grad():
            logp = torch.log_softmax(tiny_llama(torch.tensor([whole])).logits[0].double(), -1)
        ref = sum(float(logp[t - 1, whole[t]]) for t in range(len(prompt), len(whole)))
        # float32 logits of a padded batch vs a single sequence differ by a few ulp (~1e-6 each)
        assert ll == pytest.approx(ref, abs=1e-4)


def test_agreement_length_mismatch():
    with pytest.raises(ValueError, match="agreement"):
        agreement([0, 1], [0])


def test_to_dict_keeps_picks():
    r = choice_accuracy(favouring("x"), CharTokenizer(), QUESTIONS, progress=False)
    d = r.to_dict()
    assert d["kind"] == "choice" and d["picks"] == [1, 0, 2, 0] and "loglik" not in d
    json.dumps(d)

"""``lowbit eval`` on a tiny checkpoint: the table, the --json record against docs/eval-json.md,
the default baseline, and the error for a missing data file; plus the evaluation helpers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from lowbit.cli import main
from lowbit.eval.suite import materialized
from lowbit.report.plots import pareto_front

DOC = Path(__file__).resolve().parents[2] / "docs" / "eval-json.md"


def documented_fields() -> set[str]:
    """The backticked names in the first column of the doc's top-level field table."""
    text = DOC.read_text()
    table = text.split("## Top-level fields", 1)[1].split("##", 1)[0]
    return set(re.findall(r"^\| `([a-z_0-9]+)` \|", table, flags=re.M))


def test_eval_json_record_matches_the_documented_schema(tiny_hf_dir, data_dir, tmp_path,
                                                        capsys):
    ckpt = tmp_path / "ckpt"
    assert main(["quantize", str(tiny_hf_dir), "--scheme", "int4-asym-g32", "-o",
                 str(ckpt)]) == 0
    out = tmp_path / "eval.json"
    assert main(["eval", str(ckpt), "--context", "64", "--max-tokens", "256", "--json",
                 str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ckpt" in printed and "KL mean" in printed and f"baseline: {tiny_hf_dir}" in printed
    rec = json.loads(out.read_text())
    assert set(rec) == documented_fields()
    assert rec["schema"] == "lowbit.eval/1" and rec["baseline_model"] == str(tiny_hf_dir)
    for name in ("sotu-2000-2015.txt", "moby-dick-ch061-100.txt"):
        t = rec["texts"][name]
        assert t["kind"] == "divergence" and t["n_scored"] == 4 * 31 and t["kld_mean"] > 0
    assert rec["choice"]["general_knowledge.jsonl"]["n_questions"] == 3
    assert rec["speed"]["prefill_tokens_per_s"] > 0 and rec["memory"]["peak_rss_bytes"] > 0
    # size on disk is the checkpoint folder's files; 4-bit layers are smaller than fp16 ones
    assert rec["disk_bytes"] == sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    assert rec["bits_per_weight"] == pytest.approx(5.0)  # 4 bits + fp16 scale and zero per 32
    layers = rec["weight_error"]["layers"]
    assert len(layers) == 14 and all(0 < v["rel_error"] < 0.5 for v in layers.values())
    assert rec["artifact"] is False


def test_eval_missing_text_says_where_it_looked(data_dir, capsys):
    assert main(["eval", "smollm2-135m", "--text", "no-such-text.txt"]) == 2
    err = capsys.readouterr().err
    assert "no-such-text.txt" in err and str(data_dir / "text" / "no-such-text.txt") in err
    assert "LOWBIT_DATA" in err


def test_sweep_missing_question_file_fails_before_loading(data_dir, tmp_path, capsys):
    assert main(["sweep", "no-such-model", "--schemes", "int8-sym-channel", "-o",
                 str(tmp_path / "o"), "--choice", "nope.jsonl"]) == 2
    err = capsys.readouterr().err
    assert str(data_dir / "choice" / "nope.jsonl") in err


def test_materialized_gives_the_quantlinear_logits_exactly(tiny_llama):
    import copy

    from lowbit.nn import QuantLinear
    from lowbit.pipeline.inmemory import quantize

    model = copy.deepcopy(tiny_llama[0])
    quantize(model, "nf4-g64", progress=False)
    ids = torch.randint(0, 200, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
        with materialized(model):
            assert not any(isinstance(m, QuantLinear) for m in model.modules())
            got = model(ids).logits
    assert torch.equal(ref, got)  # same float32 weights, same matmuls: bit-identical
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 14  # put back


def test_pareto_front_on_hand_made_points():
    pts = [(4.0, 0.10), (4.5, 0.05), (5.0, 0.08), (8.0, 0.001), (8.5, 0.001), (2.0, 1.0),
           (4.0, 0.10)]
    # (5.0, 0.08) is beaten by (4.5, 0.05); (8.5, 0.001) by (8.0, 0.001); the duplicate
    # (4.0, 0.10) points dominate neither each other, so both stay
    assert pareto_front(pts) == [True, True, False, True, False, True, True]
    assert pareto_front([]) == []


def test_sweep_command_prints_the_table(tiny_hf_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", str(tiny_hf_dir), "--schemes", "int8-sym-channel", "-o", str(out),
            "--context", "64", "--max-tokens", "128", "--no-speed", "--no-progress",
            "--no-baseline-rows"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| int8-sym-channel |" in printed and "1 rows evaluated now" in printed
    assert main(args) == 0  # a rerun finds the row done
    assert "0 rows evaluated now, 1 from earlier runs" in capsys.readouterr().out

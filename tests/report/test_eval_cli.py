"""``lowbit eval`` on a tiny checkpoint: the table, the --json record against docs/eval-json.md,
the default baseline, and the error for a missing data file; plus the evaluation helpers, and the
evaluation through the layers' kernels against the old path (float32 ``nn.Linear`` layers)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from lowbit import kernels
from lowbit.cli import main
from lowbit.core.module_tree import set_submodule
from lowbit.eval.reference import prepare_reference
from lowbit.eval.suite import evaluate
from lowbit.nn import QuantLinear
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
    # perplexity/KL ran every layer through the reference kernel with its weight cached; the
    # speed run through the layers as chosen (automatic: the CPU int4 kernel)
    assert rec["kernels"] == {"reference(cache_weight=True)": 14}
    assert rec["speed"]["kernels"] == {"cpu-int4": 14}


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


def materialized_copy(model: nn.Module) -> nn.Module:
    """The old evaluation path: a copy where every QuantLinear is an nn.Linear holding its weight
    dequantized to float32."""
    old = copy.deepcopy(model)
    for name, m in list(old.named_modules()):
        if isinstance(m, QuantLinear):
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            lin.weight = nn.Parameter(m.qweight.dequantize(torch.float32), requires_grad=False)
            if m.bias is not None:
                lin.bias = nn.Parameter(m.bias.detach().float(), requires_grad=False)
            set_submodule(old, name, lin)
    return old


def without_seconds(obj):
    """``obj`` with every timing field left out (the only figures that may differ by run)."""
    if isinstance(obj, dict):
        return {k: without_seconds(v) for k, v in obj.items() if "seconds" not in k}
    return obj


def test_evaluation_through_kernels_equals_the_old_materialized_path(tiny_llama, data_dir,
                                                                      fast_settings):
    """Tolerance: none. The reference kernel with ``cache_weight`` dequantizes each weight once to
    the activations' dtype (float32 here) and calls ``F.linear`` with it, as nn.Linear does with
    the same float32 weight: the same products in the same order, so every figure is equal."""
    from lowbit.pipeline.inmemory import quantize

    base, tok = tiny_llama
    model = copy.deepcopy(base)
    quantize(model, "nf4-g64", progress=False)
    kernels.use(model, "reference")  # a user's choice: kept, and given the cache for the run
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ref = prepare_reference(base, tok, fast_settings)
    new = evaluate(model, tok, ref, fast_settings, name="q", scheme="nf4-g64")
    old = evaluate(materialized_copy(model), tok, ref, fast_settings, name="q", scheme="nf4-g64",
                   layers=new["weight_error"]["layers"])
    assert new["summary"]["kld_mean"] > 0
    for key in ("summary", "texts", "choice"):
        assert without_seconds(new[key]) == without_seconds(old[key]), key
    assert new["kernels"] == {"reference(cache_weight=True)": 14} and old["kernels"] == {}
    # afterwards: the user's choice is back, the cached weights are gone, storage unchanged
    assert {v.choice for v in kernels.layers(model).values()} == {"reference"}
    assert not any(n.startswith("_layout_") for n, _ in model.named_buffers())
    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], state[k]) for k in state)


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

"""The sweep runner on the tiny random Llama: records, resume, tables, artifacts, the report."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from lowbit import quantize_tensor
from lowbit.report.results import (
    BASELINE_LABEL,
    KEPT16_LABEL,
    append_record,
    read_records,
)
from lowbit.report.sweep import run_sweep

SCHEMES = ["int8-sym-channel", "int4-asym-g32"]


def sweep(tiny_llama, out, settings, schemes=SCHEMES, **kw):
    return run_sweep("tiny-llama", schemes, out, settings=settings, progress=False,
                     loaded=tiny_llama, **kw)


def test_sweep_writes_records_tables_and_report(tiny_llama, data_dir, small_settings, tmp_path):
    out = tmp_path / "sweep"
    res = sweep(tiny_llama, out, small_settings)
    assert res.ran == [BASELINE_LABEL, KEPT16_LABEL, *SCHEMES]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["schema"] == "lowbit.eval/1"
                                   for line in lines)
    recs = {r["name"]: r for r in read_records(out / "results.jsonl")}
    base, kept = recs[BASELINE_LABEL], recs[KEPT16_LABEL]
    assert base["bits_per_weight"] == 32 and base["summary"]["kld_mean"] == 0
    # every row is scored on the same tokens: 2 texts x 4 windows x (64 - 33) targets
    for r in recs.values():
        assert r["summary"]["n_scored"] == 2 * 4 * 31
    # the fp16-rounded kept tensors are the floor; 8-bit is above it, 4-bit above that
    k8, k4 = recs["int8-sym-channel"]["summary"], recs["int4-asym-g32"]["summary"]
    assert 0 < kept["summary"]["kld_mean"] < k8["kld_mean"] < k4["kld_mean"]
    # int8 per channel: 8 bits a weight plus one fp32 scale per output row
    shapes = [v["shape"] for v in recs["int8-sym-channel"]["weight_error"]["layers"].values()]
    bits = sum(o * (i * 8 + 32) for o, i in shapes) / sum(o * i for o, i in shapes)
    assert recs["int8-sym-channel"]["bits_per_weight"] == pytest.approx(bits, rel=1e-12)
    for name in SCHEMES:  # baseline ppl in each row is the baseline row's ppl (same logits)
        assert recs[name]["summary"]["ppl_base"] == pytest.approx(base["summary"]["ppl"],
                                                                  rel=1e-12)
        assert not recs[name]["artifact"]
    ch = recs["int4-asym-g32"]["choice"]["general_knowledge.jsonl"]
    assert ch["n_questions"] == 3 and ch["agreement"] is not None
    assert recs["int4-asym-g32"]["speed"]["decode_tokens_per_s"] > 0

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["name"] for r in rows] == [BASELINE_LABEL, KEPT16_LABEL, *SCHEMES]  # by bits, desc
    assert float(rows[3]["kld_mean"]) == pytest.approx(k4["kld_mean"], rel=1e-6)
    md = (out / "results.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 4 and "ARTIFACT:" not in md  # the rule is stated, no row flagged
    assert "4 windows of 64" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(res.plots) >= 3
    assert not (out / "base-logits").exists()  # removed once the sweep is complete


def test_rerun_resumes_and_skips_done_rows(tiny_llama, data_dir, fast_settings, tmp_path):
    small_settings = fast_settings
    out = tmp_path / "sweep"
    first = sweep(tiny_llama, out, small_settings, schemes=SCHEMES[:1])
    assert first.ran == [BASELINE_LABEL, KEPT16_LABEL, SCHEMES[0]]
    before = (out / "results.jsonl").read_text()
    # an append cut short (no newline) is dropped and its row redone
    with (out / "results.jsonl").open("a") as f:
        f.write('{"name": "int4-asym-g32", "sche')
    second = sweep(tiny_llama, out, small_settings)
    assert second.ran == [SCHEMES[1]]
    after = (out / "results.jsonl").read_text()
    assert after.startswith(before) and after.count("\n") == 4
    assert [r["name"] for r in second.records] == [BASELINE_LABEL, KEPT16_LABEL, *SCHEMES]
    assert sweep(tiny_llama, out, small_settings).ran == []


def test_rerun_with_other_settings_is_refused(tiny_llama, data_dir, fast_settings, tmp_path):
    from dataclasses import replace

    small_settings = fast_settings
    out = tmp_path / "sweep"
    sweep(tiny_llama, out, small_settings, schemes=SCHEMES[:1], baseline_rows=False)
    with pytest.raises(ValueError, match="other settings"):
        sweep(tiny_llama, out, replace(small_settings, context=32), schemes=SCHEMES[:1],
              baseline_rows=False)


def test_weights_already_on_the_grid_are_marked_artifact(tiny_llama, data_dir, fast_settings,
                                                         tmp_path):
    small_settings = fast_settings
    model, tok = tiny_llama
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and name != "lm_head":
                m.weight.copy_(quantize_tensor(m.weight, "int4-asym-g32").dequantize())
    out = tmp_path / "sweep"
    res = sweep((model, tok), out, small_settings, baseline_rows=False)
    recs = {r["name"]: r for r in res.records}
    grid = recs["int4-asym-g32"]
    assert grid["artifact"] and len(grid["exact_layers"]) == 14  # 2 blocks x 7 linear layers
    assert grid["weight_error"]["mean_rel"] == 0
    assert not recs["int8-sym-channel"]["artifact"]
    md = (out / "results.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| int4-asym-g32"))
    assert "ARTIFACT: 14/14 tensors" in row
    assert "artifact" in (out / "report.html").read_text().lower()


def test_append_record_writes_whole_lines_and_strict_json(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, {"name": "a", "x": math.nan, "y": [math.inf, 1.0]})
    append_record(path, {"name": "b"})
    text = path.read_text()
    assert text.endswith("\n") and text.count("\n") == 2
    assert read_records(path)[0] == {"name": "a", "x": None, "y": [None, 1.0]}
    path.write_text('{"name": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"r\.jsonl:2"):
        read_records(path)

"""``sweep --budgets``: budgeted plans as rows beside the uniform schemes, on the tiny Llama."""

from __future__ import annotations

import json

import pytest
from tests.report.conftest import TEXT

from lowbit.cli import main
from lowbit.report.budget_rows import budget_label
from lowbit.report.sweep import run_sweep

CANDIDATES = ["q8_0", "q4_0", "int4-asym-g32", "int2-asym-g32"]


@pytest.fixture
def calib_text(data_dir):
    """The default calibration text (sensitivity's), long enough for 2 x 128 byte-tokens."""
    (data_dir / "text" / "moby-dick-ch001-060.txt").write_text(TEXT * 2)
    return data_dir


def test_budget_labels_name_bits_or_sizes() -> None:
    assert budget_label("4.5") == "budget 4.5 bpw" and budget_label("4") == "budget 4 bpw"
    assert budget_label("90mb") == "budget 90MB"
    for bad in ("0", "40", "ninety", "4.5 bits"):
        with pytest.raises(ValueError):
            budget_label(bad)


def test_budget_rows_meet_their_budgets_and_resume(tiny_llama, calib_text, fast_settings,
                                                   tmp_path, lowbit_cache) -> None:
    out = tmp_path / "sweep"
    kw = dict(settings=fast_settings, progress=False, loaded=tiny_llama,
              candidates=CANDIDATES, baseline_rows=False)
    first = run_sweep("tiny-llama", ["int4-asym-g32"], out, budgets=["5", "7.5"], **kw)
    assert first.ran == ["int4-asym-g32", "budget 5 bpw", "budget 7.5 bpw"]
    recs = {r["name"]: r for r in first.records}
    for name, bpw in (("budget 5 bpw", 5.0), ("budget 7.5 bpw", 7.5)):
        rec, plan = recs[name], recs[name]["plan"]
        assert rec["scheme"] == name and plan["budget"] == f"{bpw:g} bpw"
        assert rec["model_bytes"] == plan["predicted_bytes"] <= plan["budget_bytes"]
        assert rec["model_bits_per_param"] <= bpw
        assert rec["summary"]["kld_mean"] > 0
    assert recs["budget 5 bpw"]["model_bytes"] < recs["budget 7.5 bpw"]["model_bytes"]
    sens = json.loads((out / "sensitivity.json").read_text())
    assert set(sens["chosen"]) == {"budget 5 bpw", "budget 7.5 bpw"}
    assert (out / "sensitivity.png").stat().st_size > 0 and (out / "sensitivity.md").is_file()
    html = first.report_html.read_text()
    assert "budget 7.5 bpw" in html and "Sensitivity" in html
    again = run_sweep("tiny-llama", ["int4-asym-g32"], out, budgets=["5", "7.5", "100KB"], **kw)
    assert again.ran == ["budget 100KB"]
    assert again.records[-1]["model_bytes"] <= 100_000
    assert set(json.loads((out / "sensitivity.json").read_text())["chosen"]) == {
        "budget 5 bpw", "budget 7.5 bpw", "budget 100KB"}


def test_cli_sweep_takes_budgets_without_schemes(tiny_hf_dir, calib_text, tmp_path, capsys,
                                                 lowbit_cache) -> None:
    out = tmp_path / "sweep"
    assert main(["sweep", str(tiny_hf_dir), "--budgets", "6", "--candidates",
                 ",".join(CANDIDATES), "-o", str(out), "--no-baseline-rows", "--no-progress",
                 "--max-tokens", "128", "--context", "64", "--max-questions", "1",
                 "--no-speed"]) == 0
    assert "budget 6 bpw" in capsys.readouterr().out
    assert main(["sweep", str(tiny_hf_dir), "-o", str(out)]) != 0
    assert "--schemes: give at least one scheme name (or --budgets)" in capsys.readouterr().err

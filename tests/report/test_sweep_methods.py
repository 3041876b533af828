"""Sweeping methods as well as schemes: one row per (method, scheme), calibration shared by the
data-aware rows, the method in every table, older results files read as rtn, the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lowbit.calibration import Calibration
from lowbit.cli import main
from lowbit.report.plots import MARKERS, method_markers
from lowbit.report.results import read_records
from lowbit.report.rows import plan_rows
from lowbit.report.sweep import run_sweep

SCHEME = "int4-asym-g32"
PROSE = "The crew hauled the sails while the captain watched the grey horizon for whales. "


@pytest.fixture
def calibration(tiny_llama, tmp_path: Path) -> Calibration:
    text = tmp_path / "calib.txt"
    text.write_text(PROSE * 12, encoding="utf-8")
    return Calibration.from_texts(tiny_llama[1], [text], tokens=128, length=32)


def sweep(tiny_llama, out, settings, methods, calibration=None):
    return run_sweep("tiny-llama", [SCHEME], out, settings=settings, progress=False,
                     loaded=tiny_llama, baseline_rows=False, methods=methods,
                     calibration=calibration)


def test_rows_are_method_scheme_pairs_and_bad_names_fail_first() -> None:
    rows = plan_rows(["int8-sym-channel", SCHEME], ["rtn", "gptq"])
    assert [r.name for r in rows][2:] == ["int8-sym-channel", SCHEME,
                                          "int8-sym-channel (gptq)", f"{SCHEME} (gptq)"]
    assert (rows[-1].scheme, rows[-1].method) == (SCHEME, "gptq")
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        plan_rows([SCHEME], ["rtn", "nope"])


def test_every_pair_is_a_row_with_its_method_in_every_table(tiny_llama, data_dir, fast_settings,
                                                            calibration, tmp_path) -> None:
    out = tmp_path / "sweep"
    res = sweep(tiny_llama, out, fast_settings, ["rtn", "rtn-imatrix", "gptq"], calibration)
    names = [SCHEME, f"{SCHEME} (rtn-imatrix)", f"{SCHEME} (gptq)"]
    assert res.ran == names
    recs = {r["name"]: r for r in read_records(out / "results.jsonl")}
    assert [recs[n]["method"] for n in names] == ["rtn", "rtn-imatrix", "gptq"]
    assert all(recs[n]["scheme"] == SCHEME for n in names)
    assert "calibration" not in recs[SCHEME]
    for n in names[1:]:  # both data-aware rows saw the same tokens
        assert recs[n]["calibration"] == calibration.fingerprint()
    # the rows differ: each method chose other codes for the same scheme
    errors = {n: recs[n]["weight_error"]["mean_rel"] for n in names}
    assert len(set(errors.values())) == 3
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {(r["name"], r["method"]) for r in rows} == set(zip(names, ["rtn", "rtn-imatrix",
                                                                       "gptq"]))
    md = (out / "results.md").read_text()
    assert "| scheme | method |" in md and f"| {SCHEME} (gptq) | gptq |" in md
    html = (out / "report.html").read_text()
    assert "<th>method</th>" in html and "<td>rtn-imatrix</td>" in html
    assert "gptq, rtn, rtn-imatrix" in html


def test_old_results_resume_as_rtn_and_calibration_must_match(tiny_llama, data_dir, tmp_path,
                                                              fast_settings, calibration) -> None:
    out = tmp_path / "sweep"
    sweep(tiny_llama, out, fast_settings, ["rtn"])
    jsonl = out / "results.jsonl"
    old = [json.loads(line) for line in jsonl.read_text().splitlines()]
    for rec in old:  # a results file from before methods were recorded
        del rec["method"]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in old))
    res = sweep(tiny_llama, out, fast_settings, ["rtn", "rtn-imatrix"], calibration)
    assert res.ran == [f"{SCHEME} (rtn-imatrix)"]
    rows = {r["name"]: r["method"] for r in csv.DictReader((out / "results.csv").open())}
    assert rows == {SCHEME: "rtn", f"{SCHEME} (rtn-imatrix)": "rtn-imatrix"}
    other = Calibration(calibration.tokens.flip(0), source="other")
    with pytest.raises(ValueError, match="calibrated on other tokens"):
        sweep(tiny_llama, out, fast_settings, ["rtn", "gptq"], other)


def test_each_method_gets_its_own_marker() -> None:
    rows = [{"method": "rtn"}, {"method": "gptq"}, {"method": "rtn"}, {"method": None}]
    assert method_markers(rows) == {"rtn": MARKERS[0], "gptq": MARKERS[1], "": MARKERS[2]}


def test_sweep_command_with_methods_and_calibration(tiny_hf_dir, data_dir, tmp_path,
                                                    capsys) -> None:
    text = tmp_path / "calib.txt"
    text.write_text(PROSE * 12, encoding="utf-8")
    out = tmp_path / "sweep"
    args = ["sweep", str(tiny_hf_dir), "--schemes", SCHEME, "--methods", "rtn,rtn-imatrix",
            "-o", str(out), "--context", "64", "--max-tokens", "128", "--no-speed",
            "--no-progress", "--no-baseline-rows", "--calib", str(text), "--calib-tokens", "96",
            "--calib-length", "32"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"| {SCHEME} | rtn |" in printed and f"| {SCHEME} (rtn-imatrix) | rtn-imatrix |" \
        in printed and "2 rows evaluated now" in printed
    rec = read_records(out / "results.jsonl")[1]
    assert rec["calibration"]["windows"] == 3 and rec["calibration"]["length"] == 32
    assert main(args[:-4] + ["--calib-tokens", "96", "--calibration-windows", "3"]) == 2
    assert "not both" in capsys.readouterr().err

"""``lowbit quantize --scheme llm-int8`` then ``lowbit eval`` as a new user runs them: the
checkpoint and the eval record say which threshold was used and count outlier features."""

from __future__ import annotations

import json

from lowbit.cli import main


def test_llm_int8_quantize_then_eval(tiny_hf_dir, data_dir, tmp_path, capsys) -> None:
    ckpt = tmp_path / "ckpt"
    assert main(["quantize", str(tiny_hf_dir), "--scheme", "llm-int8-thr0.5", "-o",
                 str(ckpt)]) == 0
    meta = json.loads((ckpt / "lowbit.json").read_text())
    layer = next(iter(meta["layers"].values()))
    assert layer["scheme"]["name"] == "llm-int8-thr0.5"
    assert layer["scheme"]["activations"]["threshold"] == 0.5
    out = tmp_path / "eval.json"
    assert main(["eval", str(ckpt), "--context", "64", "--max-tokens", "256", "--json",
                 str(out), "--no-speed"]) == 0
    assert "KL mean" in capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert rec["activations"] == {"aint8-atoken-thr0.5": {
        "format": "int8", "granularity": "token", "threshold": 0.5, "layers": 14}}
    o = rec["outliers"]
    assert len(o["layers"]) == 14 and o["mean_outliers_per_call"] > 0
    for v in o["layers"].values():
        assert v["threshold"] == 0.5 and v["calls"] > 0
        assert 0 <= v["outliers_per_call"] <= v["outliers_union"] <= 128
    assert rec["texts"]["moby-dick-ch061-100.txt"]["kld_mean"] > 0


def test_weight_only_eval_records_no_activations(tiny_hf_dir, data_dir, tmp_path) -> None:
    ckpt = tmp_path / "ckpt"
    assert main(["quantize", str(tiny_hf_dir), "--scheme", "int8-sym-channel", "-o",
                 str(ckpt)]) == 0
    out = tmp_path / "eval.json"
    assert main(["eval", str(ckpt), "--context", "64", "--max-tokens", "128", "--json",
                 str(out), "--no-speed"]) == 0
    rec = json.loads(out.read_text())
    assert rec["activations"] is None and rec["outliers"] is None


def test_sweep_table_marks_activation_bits() -> None:
    from lowbit.eval.settings import activation_mark, summary_row
    from lowbit.report.results import table_cells

    acts = {"aint8-atoken-thr6": {"format": "int8", "granularity": "token", "threshold": 6.0,
                                  "layers": 14}}
    rec = {"name": "llm-int8", "scheme": "llm-int8", "activations": acts,
           "bits_per_weight": 8.0}
    assert activation_mark(rec) == " [A8 int8/token t=6]"
    assert summary_row(rec)["label"] == "llm-int8 [A8 int8/token t=6]"
    headers, rows = table_cells([rec, {"name": "int8-sym-channel", "scheme": "int8-sym-channel",
                                       "activations": None, "bits_per_weight": 8.0}])
    col = [r[headers.index("scheme")] for r in rows]
    assert sorted(col) == ["int8-sym-channel", "llm-int8 [A8 int8/token t=6]"]

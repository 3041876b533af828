"""The lowbit command: each subcommand on small real inputs, and clear errors (exit code 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowbit.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_formats_table(capsys) -> None:
    code, out, _ = run(capsys, "formats")
    assert code == 0
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert lines["fp8-e4m3"][1:3] == ["8", "float"] and lines["fp8-e4m3"][4] == "448"
    assert lines["nf4"][2] == "codebook" and lines["int4"][-1] == "16"


def test_schemes_table(capsys) -> None:
    code, out, _ = run(capsys, "schemes", "int4-asym-g128", "mxfp4", "nvfp4")
    assert code == 0
    assert "4.25" in out.splitlines()[2] and "fp4-e2m1-g32-e8m0scale" in out


def test_bad_scheme_is_a_clear_error(capsys) -> None:
    code, _, err = run(capsys, "schemes", "int4-sideways-g32")
    assert code == 2 and "unknown part 'sideways'" in err and "Traceback" not in err


def test_quantize_inspect_generate(tiny_hf_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "q"
    code, text, _ = run(capsys, "quantize", str(tiny_hf_dir), "--scheme", "int4-asym-g32",
                        "-o", str(out), "--override", "down_proj=int8-sym-channel")
    assert code == 0, text
    assert "quantized layers 14" in text and "bits per weight" in text
    code, text, _ = run(capsys, "inspect", str(out))
    assert code == 0
    assert "model.layers.1.mlp.down_proj" in text and "int8-sym-channel" in text
    code, text, _ = run(capsys, "generate", str(out), "hello", "--max-new-tokens", "5")
    assert code == 0 and text.startswith("hello")
    code, _, err = run(capsys, "quantize", str(tiny_hf_dir), "--scheme", "int4-asym-g32",
                       "-o", str(out))
    assert code == 2 and "--force" in err


def test_missing_source_is_a_clear_error(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "quantize", str(tmp_path / "nope"), "--scheme", "int8-sym-g32",
                       "-o", str(tmp_path / "o"))
    assert code == 2 and "unknown model source" in err and "smollm2-135m" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["inspect", "/nonexistent/ck"],
                                  ["quantize", "x", "--scheme", "int4-asym-g32", "-o", "o",
                                   "--override", "noequals"]])
def test_other_errors(argv, capsys) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.startswith("lowbit ")


def test_quantize_with_a_data_aware_method(tiny_hf_dir: Path, tmp_path: Path, capsys) -> None:
    """A data-aware method loads the model and calibrates on the named text."""
    import json

    from tests.calibration.helpers import Recorder, registered

    text = tmp_path / "calib.txt"
    text.write_text("The whale, the sea and the ship. " * 40, encoding="utf-8")
    rec = Recorder()
    with registered("recorder", rec):
        code, out, err = run(capsys, "quantize", str(tiny_hf_dir), "--scheme", "int8-sym-g32",
                             "-o", str(tmp_path / "q"), "--method", "recorder",
                             "--calibration-text", str(text), "--calibration-windows", "3",
                             "--calibration-length", "40")
    assert code == 0, err
    assert "method           recorder" in out and "calib.txt (3 x 40 tokens)" in out
    assert len(rec.stats) == 14 and {s.n_tokens for s in rec.stats.values()} == {120}
    meta = json.loads((tmp_path / "q" / "lowbit.json").read_text())
    assert {e["method"] for e in meta["layers"].values()} == {"recorder"}
    with registered("recorder", Recorder()):
        code, _, err = run(capsys, "quantize", str(tiny_hf_dir), "--scheme", "int8-sym-g32",
                           "-o", str(tmp_path / "q2"), "--method", "recorder",
                           "--calibration-text", str(text), "--calibration-windows", "500")
    assert code == 2 and "fewer than the 500 asked" in err


def test_unknown_method_is_refused(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["quantize", "x", "--scheme", "int4-asym-g32", "-o", "o", "--method", "nope"])
    assert exc.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err

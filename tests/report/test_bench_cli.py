"""``lowbit bench`` as a user runs it: table, JSON and plot for the float model and schemes."""

from __future__ import annotations

import json

from lowbit.cli import main


def test_bench_command_prints_the_table_json_and_plot(tiny_hf_dir, tmp_path, capsys) -> None:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    assert main(["bench", str(tiny_hf_dir), "--scheme", "int8-sym-channel,int4-sym-g32",
                 "--float-dtype", "fp32,bf16", "--prompt-tokens", "8", "--new-tokens", "2",
                 "--repeats", "1", "--batches", "1,2", "--json", str(out), "--plot",
                 str(png)]) == 0
    printed = capsys.readouterr().out
    assert "memory bandwidth" in printed and "% roofline" in printed
    assert "cpu-int8 x14" in printed and "cpu-int4 x14" in printed
    rec = json.loads(out.read_text())
    assert [r["name"] for r in rec["rows"]] == ["float32", "bfloat16", "int8-sym-channel",
                                                "int4-sym-g32"]
    assert all(r["decode_tok_s"]["2"] > 0 for r in rec["rows"])
    assert rec["bandwidth"]["gb_s"] > 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bench_command_refuses_a_bad_scheme_before_loading(capsys) -> None:
    assert main(["bench", "no-such-model", "--scheme", "int4-nope"]) != 0
    assert "int4-nope" in capsys.readouterr().err

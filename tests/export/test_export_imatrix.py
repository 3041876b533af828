"""Importance matrices for llama.cpp: measured by lowbit (against a plain forward pass), used by
the GGUF export (types, metadata, errors), and both through the CLI. The comparison with
llama.cpp's own tools is in tests/runtimes/test_llamacpp_imatrix.py."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from lowbit.calibration import Calibration
from lowbit.export import to_gguf
from lowbit.export.check import read_gguf_bytes
from lowbit.export.imatrix import measure_imatrix
from lowbit.ggml.imatrix import Imatrix, read_imatrix, write_imatrix


def _plain_x2_means(model, tokens: torch.Tensor) -> dict[str, np.ndarray]:
    """Mean x^2 per input column of every Linear, from one ordinary forward pass with hooks."""
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda _m, a, _o, n=n: seen.setdefault(n, []).append(
        a[0].reshape(-1, a[0].shape[-1]).double()))
        for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model(tokens)
    for h in hooks:
        h.remove()
    return {n: torch.cat(x).square().mean(0).numpy() for n, x in seen.items()}


def test_measured_imatrix_is_the_mean_square_of_each_linear_s_input(tiny_llama) -> None:
    model, _ = tiny_llama
    tokens = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(0))
    im = measure_imatrix(model, Calibration(tokens, batch_size=2), datasets=["t.txt"],
                         progress=False)
    assert (im.chunk_count, im.chunk_size, im.datasets) == (3, 32, ["t.txt"])
    assert "output.weight" not in im  # llama-imatrix leaves the head out by default
    assert len(im) == 2 * 7 and all(n.startswith("blk.") for n in im.sums)
    plain = _plain_x2_means(model, tokens)
    pairs = {"blk.1.ffn_down.weight": "model.layers.1.mlp.down_proj",
             "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj",
             "blk.1.attn_output.weight": "model.layers.1.self_attn.o_proj"}
    for gguf_name, hf_name in pairs.items():
        assert im.counts[gguf_name].tolist() == [3 * 32]
        np.testing.assert_allclose(im.importance(gguf_name), plain[hf_name], rtol=1e-5)
    with_head = measure_imatrix(model, Calibration(tokens), process_output=True, progress=False)
    np.testing.assert_allclose(with_head.importance("output.weight"), plain["lm_head"],
                               rtol=1e-5)


def test_a_tied_head_is_never_recorded(tiny_tokenizer, caplog) -> None:
    from tests.conftest import tiny_llama_config
    from transformers import LlamaForCausalLM

    cfg = tiny_llama_config(len(tiny_tokenizer))
    cfg.tie_word_embeddings = True
    model = LlamaForCausalLM(cfg).eval()
    with caplog.at_level(logging.WARNING):
        im = measure_imatrix(model, Calibration(torch.randint(0, 256, (1, 16))),
                             process_output=True, progress=False)
    assert "output.weight" not in im and "token_embd.weight" not in im
    assert "tied to the token embeddings" in caplog.text


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """(GGUF path, imatrix measured on it): an 8-layer Llama with 256-wide rows."""
    from tests.export.conftest import wide_llama

    from lowbit.models import load_model

    tmp = tmp_path_factory.mktemp("wide-imatrix")
    _, path = wide_llama(tmp, n_layers=8)
    model, _ = load_model(path)
    tokens = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(1))
    im = measure_imatrix(model, Calibration(tokens), datasets=["rand"], progress=False)
    write_imatrix(tmp / "wide.imatrix.gguf", im)
    return path, read_imatrix(tmp / "wide.imatrix.gguf")


def _kv(path) -> dict:
    import gguf

    return {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items()
            if k.startswith("quantize.")}


def test_export_quantizes_with_the_importance_and_records_it(wide, tmp_path, lowbit_cache):
    src, im = wide
    plain = read_gguf_bytes(to_gguf(src, tmp_path / "plain.gguf", qtype="Q4_K_M").path)
    out = to_gguf(src, tmp_path / "imat.gguf", qtype="Q4_K_M", imatrix=im.path).path
    weighted = read_gguf_bytes(out)
    assert {n: t for n, (t, _) in weighted.items()} == {n: t for n, (t, _) in plain.items()}
    changed = {n for n in plain if not np.array_equal(plain[n][1], weighted[n][1])}
    k_blk = {n for n, (t, _) in plain.items() if n.startswith("blk.") and t.endswith("_K")}
    assert changed == k_blk  # every K-quant block weight moved; norms, head, embeddings did not
    assert _kv(out) == {"quantize.imatrix.file": im.path, "quantize.imatrix.dataset": "rand",
                        "quantize.imatrix.entries_count": len(im),
                        "quantize.imatrix.chunks_count": 2}
    assert _kv(tmp_path / "plain.gguf") == {}


def test_q4_0_with_an_imatrix_guards_the_first_ffn_down_layers(wide, tmp_path, lowbit_cache):
    src, im = wide
    with_im = to_gguf(src, tmp_path / "a.gguf", qtype="Q4_0", imatrix=im).tensor_types
    without = to_gguf(src, tmp_path / "b.gguf", qtype="Q4_0").tensor_types
    guarded = {n for n in with_im if with_im[n] != without[n]}
    assert guarded == {"blk.0.ffn_down.weight"}  # layers < 8 // 8
    assert (with_im["blk.0.ffn_down.weight"], without["blk.0.ffn_down.weight"]) == \
        ("Q4_1", "Q4_0")


def test_missing_and_mismatched_entries_are_named(wide, tmp_path, caplog, lowbit_cache):
    src, im = wide
    fewer = Imatrix({n: s for n, s in im.sums.items() if n != "blk.3.ffn_up.weight"},
                    {n: c for n, c in im.counts.items() if n != "blk.3.ffn_up.weight"},
                    chunk_count=im.chunk_count, chunk_size=im.chunk_size, datasets=im.datasets)
    with caplog.at_level(logging.WARNING):
        to_gguf(src, tmp_path / "a.gguf", qtype="Q4_K_M", imatrix=fewer)
    assert "no entry for 1 tensor(s)" in caplog.text and "blk.3.ffn_up.weight" in caplog.text
    short = Imatrix(dict(im.sums), dict(im.counts), datasets=["x"])
    short.sums["blk.2.attn_k.weight"] = short.sums["blk.2.attn_k.weight"][:, :128]
    with pytest.raises(ValueError, match=r"entry blk\.2\.attn_k\.weight has 128 values but "
                                         "the tensor's rows have 256 columns"):
        to_gguf(src, tmp_path / "b.gguf", qtype="Q4_K_M", imatrix=short)
    other = Imatrix({"blk.0.attn_qkv.weight": np.ones(256)}, {"blk.0.attn_qkv.weight": [1]},
                    datasets=["x"])
    with pytest.raises(ValueError, match="no entry for any of the"):
        to_gguf(src, tmp_path / "c.gguf", qtype="Q4_K_M", imatrix=other)
    assert not (tmp_path / "b.gguf").exists() and not (tmp_path / "c.gguf").exists()


def test_cli_imatrix_then_export(tiny_gguf, tmp_path, capsys, lowbit_cache) -> None:
    from tests.calibration.conftest import _TEXT

    from lowbit.cli import main

    text = tmp_path / "calib.txt"
    text.write_text(_TEXT, encoding="utf-8")
    for fmt in ("gguf", "dat"):
        out = tmp_path / f"im.{fmt}"
        assert main(["imatrix", str(tiny_gguf), "--calib", str(text), "--calib-tokens", "96",
                     "--calib-length", "32", "-o", str(out), "--format", fmt]) == 0
        im = read_imatrix(out)
        assert im.legacy == (fmt == "dat") and len(im) == 14 and im.chunk_count == 3
        assert im.datasets == [str(text)]
        assert "3 chunks of 32 tokens" in capsys.readouterr().out
    assert main(["imatrix", str(tiny_gguf), "--calib", str(text), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["imatrix", str(tiny_gguf), "--calib", str(text), "--calib-tokens", "64000",
                 "--calib-length", "32", "-o", str(tmp_path / "x.gguf")]) == 2
    assert "fewer than the 2000 asked for" in capsys.readouterr().err
    gguf_out = tmp_path / "q.gguf"
    assert main(["export", str(tiny_gguf), "--type", "Q4_0", "--imatrix", str(out),
                 "-o", str(gguf_out)]) == 0
    assert f"imatrix          {out}" in capsys.readouterr().out
    assert _kv(gguf_out)["quantize.imatrix.file"] == str(out)


def test_a_quantized_model_is_refused(tiny_llama) -> None:
    from lowbit import quantize

    model, _ = tiny_llama
    quantize(model, "int8-sym-channel")
    with pytest.raises(ValueError, match="measured on the unquantized model"):
        measure_imatrix(model, Calibration(torch.randint(0, 256, (1, 16))), progress=False)


@pytest.mark.parametrize("preset", ["q4_k_m", "q3_k_s"])
def test_a_plan_quantized_with_the_imatrix_exports_the_imatrix_export_s_bytes(
        wide, tmp_path, preset, lowbit_cache) -> None:
    """rtn-imatrix on a plan of ggml types, from the same imatrix file, writes every tensor's
    bytes exactly as the imatrix-aware GGUF export of the float model does (the reference:
    `to_gguf(imatrix=)`, itself checked against llama-quantize), and the checkpoint exports
    them without requantizing. The head has no entry: both quantize it without importance."""
    import lowbit
    from lowbit.models import load_model
    from lowbit.pipeline.presets import preset_plan

    src, im = wide
    want = read_gguf_bytes(to_gguf(src, tmp_path / "ref.gguf", qtype=preset.upper(),
                                   imatrix=im.path).path)
    model, tok = load_model(src)
    report = lowbit.quantize(model, preset_plan(model, preset), method="rtn-imatrix",
                             imatrix=im.path, keep_dtype=torch.float32, progress=False)
    assert report.layers["lm_head"].method == "rtn"
    assert report.layers["model.layers.0.mlp.down_proj"].method == "rtn-imatrix"
    ck = lowbit.save(model, tmp_path / "ck", tokenizer=tok,
                     layer_info={**report.layers, **report.embeddings})
    exported = to_gguf(ck, tmp_path / "ours.gguf")
    got = read_gguf_bytes(exported.path)
    quantized = sorted(n for n, (t, _) in want.items() if t not in ("F32", "F16"))
    assert sorted(exported.lossless) == quantized  # copied from the codes, none re-encoded
    assert {n: got[n][0] for n in quantized} == {n: want[n][0] for n in quantized}
    assert [n for n in quantized if not np.array_equal(got[n][1], want[n][1])] == []
    plain = read_gguf_bytes(to_gguf(src, tmp_path / "plain.gguf", qtype=preset.upper()).path)
    moved = [n for n in quantized if not np.array_equal(plain[n][1], want[n][1])]
    assert len(moved) > len(quantized) // 2  # the importance did change the bytes

"""Statistics from a llama.cpp imatrix file: mapped to the model's Linears by GGUF name,
used by rtn-imatrix through lowbit.quantize and the CLI, and refused where they cannot serve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lowbit
from lowbit.calibration.imatrix import imatrix_stats, load_imatrix
from lowbit.export.gguf_metadata import gguf_name
from lowbit.ggml.imatrix import Imatrix, write_imatrix
from lowbit.methods.weighted import quantize_weighted
from lowbit.pipeline.plan import plan_layers

SCHEME = "int4-asym-g32"


def linears(model) -> list[str]:
    return list(plan_layers(model, SCHEME).quantized)


def random_imatrix(model, *, skip: str | None = None, short: str | None = None) -> Imatrix:
    """An importance vector per planned Linear under its GGUF name, skewed like real x^2."""
    rng = np.random.default_rng(0)
    values = {}
    for name in linears(model):
        g = gguf_name(f"{name}.weight", "llama", model.config.num_hidden_layers)
        n = model.get_submodule(name).weight.shape[1] - (name == short)
        if name != skip:
            values[g] = (rng.random(n) ** 4 * 50).astype(np.float32)
    tokens = dict.fromkeys(values, 96)
    return Imatrix.from_sums({g: v * 96 for g, v in values.items()}, tokens, chunk_size=32,
                             chunk_count=3, datasets=["calib.txt"])


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_each_layer_gets_its_own_entry(tiny_llama, tmp_path: Path, fmt: str) -> None:
    model, tok = tiny_llama
    imx = random_imatrix(model)
    path = tmp_path / f"imatrix.{fmt}"
    write_imatrix(path, imx, format=fmt)
    read = load_imatrix(path)
    stats = imatrix_stats(model, linears(model), read)
    assert torch.equal(stats["model.layers.1.self_attn.q_proj"].x2_mean,
                       torch.from_numpy(read.importance("blk.1.attn_q.weight")).double())
    weights = {n: model.get_submodule(n).weight.detach().clone() for n in linears(model)}
    report = lowbit.quantize(model, SCHEME, method="rtn-imatrix", imatrix=path, progress=False)
    assert len(report.layers) == len(weights) == 14
    for name, w in weights.items():
        want = quantize_weighted(w, SCHEME, stats[name].x2_mean)
        assert torch.equal(model.get_submodule(name).qweight.codes, want.codes)
    recorded = report.layers["model.layers.0.mlp.down_proj"].method_settings["imatrix"]
    assert recorded["entries"] == 14 and recorded["datasets"] == ["calib.txt"]
    assert len(recorded["sha256"]) == 64


@pytest.mark.parametrize("kwargs, match", [
    ({"skip": "model.layers.1.mlp.up_proj"}, "model.layers.1.mlp.up_proj: imatrix .* has no "
                                             "entry 'blk.1.ffn_up.weight'"),
    ({"short": "model.layers.0.self_attn.o_proj"}, "o_proj: .*has 63 values, the layer 64"),
])
def test_a_file_for_another_model_is_refused(tiny_llama, tmp_path: Path, kwargs, match) -> None:
    model, _ = tiny_llama
    path = tmp_path / "imatrix.dat"
    write_imatrix(path, random_imatrix(model, **kwargs))
    with pytest.raises(ValueError, match=match):
        lowbit.quantize(model, SCHEME, method="rtn-imatrix", imatrix=path, progress=False)


def test_methods_that_need_more_than_x2_mean_are_refused(tiny_llama, tmp_path: Path,
                                                         tiny_calibration) -> None:
    model, _ = tiny_llama
    path = tmp_path / "imatrix.dat"
    write_imatrix(path, random_imatrix(model))
    for method, match in (("gptq", r"needs \['hessian'\]"), ("awq", "block by block"),
                          ("rtn", "uses no data")):
        with pytest.raises(ValueError, match=match):
            lowbit.quantize(model, SCHEME, method=method, imatrix=path, progress=False)
    with pytest.raises(ValueError, match="not both"):
        lowbit.quantize(model, SCHEME, method="rtn-imatrix", imatrix=path,
                        calibration=tiny_calibration, progress=False)
    with pytest.raises(ValueError, match="not found"):
        lowbit.quantize(model, SCHEME, method="rtn-imatrix", imatrix=tmp_path / "no.dat",
                        progress=False)


def test_cli_quantize_with_an_imatrix_and_with_several_texts(tiny_hf_dir: Path, tiny_llama,
                                                             tmp_path: Path, capsys) -> None:
    from lowbit.cli import main

    path = tmp_path / "imatrix.dat"
    write_imatrix(path, random_imatrix(tiny_llama[0]))
    code = main(["quantize", str(tiny_hf_dir), "--scheme", SCHEME, "-o", str(tmp_path / "q"),
                 "--method", "rtn-imatrix", "--imatrix", str(path)])
    out = capsys.readouterr().out
    assert code == 0 and f"imatrix          {path}" in out
    layers = json.loads((tmp_path / "q" / "lowbit.json").read_text())["layers"]
    assert {e["method"] for e in layers.values()} == {"rtn-imatrix"}
    texts = []
    for k, line in enumerate(("The whale, the sea and the ship. ", "Taxes, jobs and trade. ")):
        texts.append(tmp_path / f"t{k}.txt")
        texts[-1].write_text(line * 30, encoding="utf-8")
    code = main(["quantize", str(tiny_hf_dir), "--scheme", SCHEME, "-o", str(tmp_path / "c"),
                 "--method", "rtn-imatrix", "--calib", *map(str, texts), "--calib-tokens",
                 "200", "--calib-length", "40"])
    assert code == 0 and "t0.txt + " in capsys.readouterr().out
    layers = json.loads((tmp_path / "c" / "lowbit.json").read_text())["layers"]
    cal = layers["model.layers.0.mlp.up_proj"]["method_settings"]["calibration"]
    assert [s["windows"] for s in cal["sources"]] == [3, 2] and cal["windows"] == 5
    assert main(["quantize", str(tiny_hf_dir), "--scheme", SCHEME, "-o", str(tmp_path / "x"),
                 "--method", "rtn-imatrix", "--imatrix", str(path), "--calib",
                 str(texts[0])]) == 2
    assert "not both" in capsys.readouterr().err


def test_a_tied_head_is_quantized_without_an_entry(tiny_tokenizer, tmp_path: Path) -> None:
    """llama-imatrix never records a head tied to the embedding (llama-quantize quantizes
    token_embd without importance): rtn-imatrix quantizes it by plain rtn, the rest weighted."""
    from tests.test_embeddings import _tied_llama

    model = _tied_llama(tiny_tokenizer)
    path = tmp_path / "imatrix.gguf"
    write_imatrix(path, random_imatrix(model))
    head = model.lm_head.weight.detach().clone()
    down = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    report = lowbit.quantize(model, SCHEME, embedding="q8_0", method="rtn-imatrix",
                             imatrix=path, progress=False)
    assert report.layers["lm_head"].method == "rtn"
    assert torch.equal(model.lm_head.qweight.codes, lowbit.quantize_tensor(head, "q8_0").codes)
    imx = load_imatrix(path).importance("blk.0.ffn_down.weight")
    want = quantize_weighted(down, SCHEME, torch.from_numpy(np.asarray(imx, dtype=np.float64)))
    assert torch.equal(model.model.layers[0].mlp.down_proj.qweight.codes, want.codes)

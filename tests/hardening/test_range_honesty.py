"""Range honesty: outliers kept exactly, and saturating or underflowing scale formats reported
(a QuantRangeWarning naming tensor, blocks and worst value; recorded; an error when strict)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.cli import main
from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme


def _caught(fn) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(c.message) for c in caught if issubclass(c.category, lowbit.QuantRangeWarning)]


def test_outliers_are_kept_exactly_and_counted() -> None:
    w = torch.randn(16, 256)
    w[3, 7] = 1e30
    qt = lowbit.quantize_tensor(w, "int4-asym-g128-out8", name="big")
    assert qt.outlier_value.dtype == torch.float32
    q = qt.dequantize()
    assert torch.isfinite(q).all() and q[3, 7].item() == pytest.approx(1e30, rel=1e-7)
    plain = lowbit.quantize_tensor(w.clamp(-10, 10), "int4-asym-g128")
    assert qt.nbytes - plain.nbytes == 8 * (4 + 4)  # int32 index + fp32 value per outlier


def test_old_fp16_outlier_tables_still_load() -> None:
    w = torch.randn(8, 64)
    qt = lowbit.quantize_tensor(w, "int4-asym-g32-out4")
    parts = {**qt.tensors(), "outlier_value": qt.outlier_value.to(torch.float16)}
    old = QTensor.from_tensors(Scheme.parse("int4-asym-g32-out4"), qt.shape, parts)
    assert old.bits_per_weight < qt.bits_per_weight  # counted at the 16 bits it stores
    torch.testing.assert_close(old.dequantize(), qt.dequantize(), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="w: outlier_value should be a 1-D float32"):
        QTensor.from_tensors(qt.scheme, qt.shape,
                             {**qt.tensors(), "outlier_value": qt.outlier_value.double()}, "w")


@pytest.mark.parametrize("scheme", ["int4-asym-g128", "nf4-g64", "int4-sym-g32"])
def test_saturating_fp16_scales_warn(scheme: str) -> None:
    w = torch.randn(4, 256)
    w[1, 3] = 1e30
    msgs = _caught(lambda: lowbit.quantize_tensor(w, scheme, name="layers.0.up"))
    assert len(msgs) == 1, msgs
    assert msgs[0].startswith("layers.0.up: 1 block(s) need a scale beyond the fp16 scale")
    assert "65504" in msgs[0] and ("e+2" in msgs[0] or "e+30" in msgs[0])  # worst: ~1e29-1e30
    with pytest.raises(ValueError, match=r"layers.0.up: 1 block\(s\).*strict"):
        lowbit.quantize_tensor(w, scheme, name="layers.0.up", strict=True)


@pytest.mark.parametrize("scheme", ["int4-asym-g128", "nf4-g64", "mxfp4"])
def test_underflowing_blocks_warn(scheme: str) -> None:
    w = torch.randn(4, 256)
    w[2] *= 1e-40  # one row of tiny weights: every block of it comes back all zeros
    msgs = _caught(lambda: lowbit.quantize_tensor(w, scheme, name="tiny"))
    blocks = 256 // Scheme.parse(scheme).block_size
    assert msgs == [msgs[0]] and msgs[0].startswith(f"tiny: {blocks} nonzero block(s) "
                                                    "dequantize to all zeros"), msgs
    assert _caught(lambda: lowbit.quantize_tensor(torch.randn(4, 256), scheme)) == []


def _poison(model: torch.nn.Module) -> str:
    name = "model.layers.0.mlp.up_proj"
    with torch.no_grad():
        model.get_submodule(name).weight[0, 0] = 1e30
    return name


def test_model_records_warnings_and_strict_refuses(tiny_llama, tmp_path: Path) -> None:
    model, tok = tiny_llama
    name = _poison(model)
    with pytest.raises(ValueError, match=f"{name}: 1 block"):
        lowbit.quantize(model, "int4-asym-g32", progress=False, strict=True)
    with pytest.warns(lowbit.QuantRangeWarning, match=name):
        report = lowbit.quantize(model, "int4-asym-g32", progress=False)
    assert report.warnings == list(report.layers[name].warnings) and len(report.warnings) == 1
    lowbit.save(model, tmp_path / "ck", tokenizer=tok, layer_info=report.layers)
    entry = json.loads((tmp_path / "ck" / "lowbit.json").read_text())["layers"][name]
    assert entry["warnings"] == report.warnings

    from lowbit.eval.suite import _sizes

    sizes = _sizes(model, report.table(), None, False)
    assert sizes["range_warnings"] == report.warnings


def test_cli_strict_writes_nothing(tiny_llama, tmp_path: Path, capsys) -> None:
    model, tok = tiny_llama
    _poison(model)
    src = tmp_path / "src"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    out = tmp_path / "q"
    code = main(["quantize", str(src), "--scheme", "int4-asym-g32", "-o", str(out), "--strict"])
    err = capsys.readouterr().err
    assert code == 2 and "lowbit quantize: error: model.layers.0.mlp.up_proj: 1 block" in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["src"]
    with pytest.warns(lowbit.QuantRangeWarning):
        code = main(["quantize", str(src), "--scheme", "int4-asym-g32", "-o", str(out)])
    assert code == 0 and "range warnings   1" in capsys.readouterr().out

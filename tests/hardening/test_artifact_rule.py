"""One artifact rule for every table: a row whose quantized weights come back within 0.1% of a
baseline that already lay on (or near) the scheme's grid is flagged, not only exact ones."""

from __future__ import annotations

import torch

import lowbit
from lowbit.eval.artifact import ON_GRID_REL_ERROR, RULE, on_grid_tensors
from lowbit.eval.settings import summary_row
from lowbit.eval.suite import _sizes
from lowbit.report.results import render_markdown, table_cells


def _near_grid(model: torch.nn.Module) -> None:
    """Put every Linear weight on the int4-asym-g32 grid (as a GGUF's Q4_1 source would be)."""
    with torch.no_grad():
        for _, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and m.out_features != 256:  # not the output head
                m.weight.copy_(lowbit.quantize_tensor(m.weight, "int4-asym-g32").dequantize())


def _record(model: torch.nn.Module, scheme: str) -> dict:
    report = lowbit.quantize(model, scheme, progress=False)
    rec = {"name": scheme, "scheme": scheme, "baseline": False, "summary": {}, "choice": {},
           "settings": {}, "texts": {}}
    rec.update(_sizes(model, report.table(), None, False))
    return rec


def test_near_grid_rows_are_flagged_everywhere(tiny_llama) -> None:
    model, _ = tiny_llama
    _near_grid(model)
    rec = _record(model, "int8-asym-g32")  # contains the int4 grid up to fp16 rounding
    errors = {n: v["rel_error"] for n, v in rec["weight_error"]["layers"].items()}
    assert all(0 < e < ON_GRID_REL_ERROR for e in errors.values())  # near, not exact
    assert rec["exact_layers"] == [] and rec["artifact"]
    assert rec["on_grid_layers"] == on_grid_tensors(errors) and len(errors) == 14
    old = {**rec, "artifact": False, "on_grid_layers": None}  # a record from before the rule
    assert summary_row(old)["artifact"] and summary_row(old)["on_grid_layers"] == 14
    headers, rows = table_cells([old])
    assert rows[0][headers.index("note")].startswith("ARTIFACT: 14/14 tensors already on")
    assert RULE in render_markdown([old])


def test_float_weights_are_not_flagged(tiny_llama) -> None:
    model, _ = tiny_llama
    rec = _record(model, "int8-asym-g32")
    assert not rec["artifact"] and rec["on_grid_layers"] == []
    assert RULE in render_markdown([rec])  # the rule is stated under every table

"""Budgeted rows of a sweep (``lowbit sweep --budgets 3.5,4.5,90MB``).

A budget is whole-model bits per parameter (a bare number) or a size (``90MB``, ``1.5GB``: the
tensors' bytes as a checkpoint stores them). Sensitivity is measured once for the sweep
(:func:`lowbit.budget.sensitivity.measure_sensitivity`, cached: a resumed sweep reads it back),
on sensitivity's own small calibration; each budget's plan is then allocated from it and
quantized with ``rtn`` (a plan may hold ggml types, which only ``rtn`` writes). The row's record
keeps the plan's summary under ``"plan"``. The sensitivity table (``sensitivity.md``), heatmap
(``sensitivity.png``) and data (``sensitivity.json``, which the HTML report reads) are written
into the sweep folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from lowbit.storage.atomic import write_text_atomic

SENSITIVITY_JSON = "sensitivity.json"


def budget_label(text: str) -> str:
    """The row name of budget ``text``: ``budget 4.5 bpw`` or ``budget 90MB``; a ValueError
    names a budget that is neither."""
    from lowbit.budget.plan import parse_size

    t = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        if not 0 < float(t) <= 32:
            raise ValueError(f"--budgets {t}: bits per parameter must be in (0, 32]")
        return f"budget {float(t):g} bpw"
    parse_size(t)
    return f"budget {t.upper().replace(' ', '')}"


def _target(label: str) -> dict[str, Any]:
    from lowbit.budget.plan import parse_size

    value = label.removeprefix("budget ")
    if value.endswith(" bpw"):
        return {"target_bpw": float(value.removesuffix(" bpw"))}
    return {"target_bytes": parse_size(value)}


def make_plans(base: nn.Module, tokenizer: Any, labels: Sequence[str], candidates: list[str],
               out: Path, *, progress: bool = True, executor: Any = None) -> dict[str, Any]:
    """Row label -> (TensorPlan, record extras) for each budget row, from one sensitivity
    measurement of ``base``; the sensitivity files are written into ``out``."""
    from lowbit.budget.plan import budget_plan
    from lowbit.budget.report import write_sensitivity_report
    from lowbit.budget.sensitivity import default_calibration, measure_sensitivity

    if tokenizer is None:
        raise ValueError("--budgets: the model has no tokenizer, and sensitivity needs "
                         "calibration text")
    cal = default_calibration(tokenizer)
    sens = measure_sensitivity(base, cal, candidates, progress=progress, executor=executor)
    plans, chosen = {}, {}
    for label in labels:
        plan = budget_plan(base, sens, **_target(label))
        chosen[label] = {u: str(plan.layers.get(m[0], plan.embedding))
                         for u, m in sens.units.items()}
        extras = {**plan.details, "budget": label.removeprefix("budget "),
                  "sensitivity_calibration": cal.fingerprint(),
                  "placed_pairs": sum(map(len, sens.placed.values()))}
        plans[label] = (plan, extras)
    write_sensitivity_report(sens, out / "sensitivity",
                             chosen[labels[0]] if len(labels) == 1 else None)
    path = out / SENSITIVITY_JSON
    if path.is_file():  # a resumed sweep: keep the plans of budgets made before
        chosen = {**json.loads(path.read_text(encoding="utf-8")).get("chosen", {}), **chosen}
    data = {"kl": sens.kl, "nbytes": sens.nbytes, "params": sens.params,
            "placed": {u: sorted(p) for u, p in sens.placed.items()}, "chosen": chosen}
    write_text_atomic(path, json.dumps(data))
    return plans


def sensitivity_html(out: Path, esc: Any, data_uri: Any) -> list[str]:
    """The report's sensitivity section (heatmap and unit x scheme table) from the files
    :func:`make_plans` wrote into ``out``; [] when the sweep had no budgets."""
    path, png = out / SENSITIVITY_JSON, out / "sensitivity.png"
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    kl, nbytes, params = data["kl"], data["nbytes"], data["params"]
    bpw = {s: n * 8 / params[u] for u, per in nbytes.items() for s, n in per.items()}
    schemes = sorted(bpw, key=lambda s: (bpw[s], s))
    out_html = ["<h2>Sensitivity</h2>",
                "<p>Mean KL per token when one tensor alone is quantized (calibration windows). "
                "<i>Italic</i>: placed from the tensor's measured anchors by the proxy's ratio, "
                "not measured. Budgets' choices: " + esc(", ".join(data.get("chosen", {})))
                + " (per tensor in sensitivity.json).</p>"]
    if png.is_file():
        out_html.append(f'<figure><img src="{data_uri(png)}" alt="sensitivity heatmap">'
                        "<figcaption>Sensitivity heatmap (log10 KL), tensor x scheme"
                        "</figcaption></figure>")
    out_html.append("<table><thead><tr><th>tensor</th>" +
                    "".join(f"<th>{esc(s)}</th>" for s in schemes) + "</tr></thead><tbody>")
    for unit, per in kl.items():
        placed = set(data.get("placed", {}).get(unit, ()))
        cells = "".join(
            '<td class="num"></td>' if s not in per else
            f'<td class="num">{"<i>" if s in placed else ""}{per[s]:.3g}'
            f'{"</i>" if s in placed else ""}</td>' for s in schemes)
        out_html.append(f"<tr><td>{esc(unit)}</td>{cells}</tr>")
    out_html.append("</tbody></table>")
    return out_html

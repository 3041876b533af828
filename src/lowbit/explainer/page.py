"""The explain page: one self-contained HTML file, every figure inlined as a PNG data URI."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING

from lowbit.storage.atomic import write_text_atomic

if TYPE_CHECKING:
    from lowbit.explainer.explanation import Explanation
    from lowbit.explainer.trace import WeightTrace

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, td.bits { font-family: ui-monospace, monospace; }
figure { margin: 1em 0; }
.row { display: flex; flex-wrap: wrap; gap: 1em; }
.row figure { flex: 1 1 0; min-width: 420px; margin: 0.5em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 14px; color: #555; }
.note { background: #f4f4f4; border-left: 4px solid #999; padding: 0.5em 1em; }
"""


def _figure(exp: Explanation, key: str, caption: str) -> str:
    path = exp.files[key]
    uri = "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img src="{uri}" alt="{html.escape(key)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _row(figures: list[str]) -> str:
    """Figures side by side (they wrap on a narrow window)."""
    return '<div class="row">' + "".join(figures) + "</div>"


def _table(headers: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _trace_rows(t: WeightTrace) -> list[list[object]]:
    zero = "none (symmetric)" if t.zero is None else f"{t.zero:.8g}"
    return [
        ["weight", f"w[{t.row}, {t.col}] = {t.weight:.8g} (block {t.block})"],
        ["float32 bits (sign|exponent|mantissa)", t.float32_bits],
        ["block scale (working value)", f"{t.scale:.8g}"],
        ["stored scale bits", t.scale_bits],
        ["zero", zero],
        ["code", f"{t.code} = {t.code:0{t.bits}b}b, decodes to {t.code_value:g}"],
        ["checkpoint file", f"{t.file}"],
        ["stored tensor", f"{t.stored_name} (data starts at byte {t.data_offset})"],
        ["where the code is", f"byte {t.byte_offset}, bits {t.bit}..{t.bit + t.bits - 1} "
                              "(bit 0 = least significant; codes are a little-endian stream)"],
        ["stored byte(s)", t.stored_bytes],
        ["dequantized", f"{t.dequantized:.8g}" + (" (an outlier: kept exactly in fp32, its "
                                                   "code is not used)" if t.outlier else "")],
        ["error", f"{t.error:.4g} ({t.error / t.weight:.3g} relative)" if t.weight
                  else f"{t.error:.4g}"],
    ]


def _sections(exp: Explanation) -> list[str]:
    parts = ["<h2>1. The format</h2>"]
    for name, view in exp.formats.items():
        parts.append(f"<p><b>{html.escape(name)}</b>: {html.escape(view.description)}. "
                     f"Values: {html.escape(', '.join(f'{v:g}' for v in view.values))}</p>")
    parts.append(_row([_figure(exp, f"format {name}", f"{name}: bit fields, every value, and "
                               "the gap between neighbouring values") for name in exp.formats]))
    parts.append("<h2>2. The tensor against the grid</h2>")
    parts.append(_row([_figure(exp, f"grid {v.scheme}", f"{v.scheme}: the tensor's histogram "
                               "with a typical block's grid, outliers marked; the typical "
                               "(median-error) block and the worst block with their own grids")
                       for v in exp.schemes]))
    parts.append("<h2>3. The error</h2>")
    parts.append(_table(["scheme", "bits/weight", "relative error", "worst block (row, block)",
                         "worst block error"],
                        [[v.scheme, f"{v.bits_per_weight:.4f}", f"{v.rel_error:.5g}",
                          f"({v.worst.row}, {v.worst.block})", f"{v.worst.rel_error:.4g}"]
                         for v in exp.schemes]))
    parts.append(_row([_figure(exp, f"heatmap {v.scheme}", f"{v.scheme}: relative error of "
                               "every block (rows x blocks)") for v in exp.schemes]))
    parts.append(_row([_figure(exp, "errors", "error distributions: per weight and per block"),
                       _figure(exp, "comparison", "this tensor under sym and asym scales and "
                               "every block size: error against bits per weight")]))
    parts.append("<h2>4. Bit for bit</h2>")
    parts.append(_row([f"<div><h3>{html.escape(t.scheme)}</h3>"
                       + _table(["step", "value"], _trace_rows(t)) + "</div>"
                       for t in exp.traces]))
    parts.append("<h2>5. Sensitivity</h2>")
    parts.append(f'<p class="note">{html.escape(exp.sensitivity)}</p>')
    if exp.ranks:
        parts.append(_table(["scheme", "rank (1 = most sensitive)", "of units", "mean KL"],
                            [[r.scheme, r.rank, r.units, f"{r.kl:.4g}"] for r in exp.ranks]))
    return parts


def render_page(exp: Explanation) -> str:
    """The page as a string (needs the figures in ``exp.files``)."""
    w = exp.weights
    title = f"lowbit explain: {exp.tensor}"
    head = (f"<p>model <code>{html.escape(exp.model)}</code>, shape {tuple(w.shape)}, "
            f"min {w.min():.4g}, max {w.max():.4g}, standard deviation {w.std():.4g}, "
            f"{exp.outliers} outliers beyond 6 standard deviations</p>")
    body = "\n".join([f"<h1>{html.escape(title)}</h1>", head, *_sections(exp)])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


def write_page(exp: Explanation, path: Path) -> Path:
    """Write the page atomically and return its path."""
    return write_text_atomic(path, render_page(exp))

"""One self-contained ``report.html`` for a sweep: the table, the plots (PNG data URIs), the run's
settings and the artifact notes. No script, no external file: it opens offline in any browser."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lowbit.eval.artifact import RULE as ARTIFACT_RULE
from lowbit.eval.settings import summary_row
from lowbit.report.results import settings_line, sort_rows, table_cells

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222;
       padding: 0 1em; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; }
th { background: #f0f0f0; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.artifact td { background: #fff3cd; }
tr.baseline td { background: #eef5ff; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 14px; color: #555; }
.note { background: #fff3cd; border: 1px solid #e0c36b; padding: 0.6em 1em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 12px; }
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(records: Sequence[dict[str, Any]], plots: Sequence[tuple[Path, str]], *,
                title: str, context: dict[str, Any] | None = None,
                folder: Path | None = None) -> str:
    """The page as a string; ``context`` (model, command, wall time...) is shown as settings;
    ``folder``: the sweep folder, whose sensitivity files (``--budgets``) get a section."""
    from lowbit.report.budget_rows import sensitivity_html

    esc = html.escape
    headers, rows = table_cells(records)
    ordered = sort_rows(records)
    body = [f"<h1>{esc(title)}</h1>"]
    if context:
        body.append("<p>" + "; ".join(f"<b>{esc(str(k))}</b>: {esc(str(v))}"
                                      for k, v in context.items()) + "</p>")
    body.append(f"<p>{esc(settings_line(records))}</p>")
    artifacts = [r["name"] for r in records if summary_row(r)["artifact"]]
    body.append('<p class="note"><b>Artifacts:</b> ' + esc(", ".join(artifacts) or "none") +
                ". " + esc(ARTIFACT_RULE) + "</p>")
    body.append("<h2>Results</h2><table><thead><tr>" +
                "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead><tbody>")
    for rec, cells in zip(ordered, rows):
        cls = ("artifact" if summary_row(rec)["artifact"] else
               "baseline" if rec.get("baseline") else "")
        tds = "".join(
            f"<td>{esc(c)}</td>" if h in ("scheme", "method", "note")
            else f'<td class="num">{esc(c)}</td>'
            for h, c in zip(headers, cells))
        body.append(f'<tr class="{cls}">{tds}</tr>')
    body.append("</tbody></table>")
    body.append("<p>bits/w: bits per weight of the linear layers (output head and embeddings "
                "not counted, whether kept in fp16 or quantized); size MB: all tensors as a "
                "lowbit checkpoint stores them; KL: KL(baseline ‖ model) of the next-token "
                "distribution over the full vocabulary, in nats, per scored token; top-1: share "
                "of tokens whose most likely next token is the same for both models; same pick: "
                "share of questions answered as the baseline answered.</p>")
    if plots:
        body.append("<h2>Plots</h2>")
    for path, caption in plots:
        body.append(f'<figure><img src="{_data_uri(Path(path))}" alt="{esc(caption)}">'
                    f"<figcaption>{esc(caption)}</figcaption></figure>")
    if folder is not None:
        body.extend(sensitivity_html(Path(folder), esc, _data_uri))
    if records:
        body.append("<h2>Settings</h2><pre>" +
                    esc(json.dumps(records[0].get("settings"), indent=1)) + "</pre>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>\n" +
            "\n".join(body) + "\n</body></html>\n")


def write_html(records: Sequence[dict[str, Any]], plots: Sequence[tuple[Path, str]],
               path: str | Path, *, title: str, context: dict[str, Any] | None = None) -> Path:
    """Write :func:`render_html` to ``path``."""
    path = Path(path)
    path.write_text(render_html(records, plots, title=title, context=context,
                                folder=path.parent), encoding="utf-8")
    return path

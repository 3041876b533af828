"""A sweep's results file (``results.jsonl``: one complete JSON record a line, appended as each
scheme finishes) and the tables made from it (``results.csv``, ``results.md``)."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lowbit.eval.artifact import RULE as ARTIFACT_RULE
from lowbit.eval.artifact import note as artifact_note
from lowbit.eval.settings import summary_row

RESULTS_JSONL = "results.jsonl"


def _finite(obj: Any) -> Any:
    """The object with every non-finite float replaced by None (strict JSON has no NaN/inf)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def append_record(path: str | Path, record: dict[str, Any], *, key: str = "name") -> bool:
    """Append one record as one line with a single ``write`` on an O_APPEND file, then fsync, so
    a reader sees whole lines (an interrupted write leaves at most a partial last line, which
    :func:`read_records` drops, and this function cuts off before it appends, so a new line is
    never glued to a torn one). The file is ``flock``ed while the records already there are
    read, and a record whose ``key`` is among them is not written: a row is never written twice,
    even by two processes. True when the line was written."""
    import fcntl

    line = (json.dumps(_finite(record), sort_keys=True, allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if any(r.get(key) == record.get(key) for r in read_records(path, repair=True)):
            return False
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        return True
    finally:
        os.close(fd)  # releases the flock


def read_records(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The complete records of a results file (none when it does not exist). A last line with no
    newline is an interrupted append: it is skipped, and cut off the file when ``repair``."""
    path = Path(path)
    if not path.is_file():
        return []
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    if repair and len(complete) != len(raw):
        with path.open("r+b") as f:
            f.truncate(len(complete))
    out = []
    for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as err:
            raise ValueError(f"{path}:{number}: not a JSON record ({err})") from None
        if not isinstance(rec, dict) or "name" not in rec:
            raise ValueError(f"{path}:{number}: not a lowbit result record")
        out.append(rec)
    return out


#: record keys that time or size a run's process rather than measure the row
TIMING_KEYS = frozenset({"seconds", "speed", "memory"})


def figures(record: Any) -> Any:
    """A record without its timing keys (at any depth): what two runs of a row must agree on."""
    if isinstance(record, dict):
        return {k: figures(v) for k, v in record.items() if k not in TIMING_KEYS}
    if isinstance(record, list):
        return [figures(v) for v in record]
    return record


def failed_record(name: str, model: str, settings: dict[str, Any], error: str | None,
                  attempts: int, embedding: str | None = None) -> dict[str, Any]:
    """The record of a row that failed every attempt: kept in results.jsonl (so the failure
    and its error are on file), left out of the tables, and tried again by the next run."""
    from lowbit.eval.settings import SCHEMA

    rec = {"schema": SCHEMA, "name": name, "model": model, "settings": settings,
           "failed": True, "error": error, "attempts": attempts}
    if embedding is not None:
        rec["embedding"] = embedding
    return rec


def drop_records(path: str | Path, names: set[str], *, key: str = "name") -> int:
    """Remove the failed records whose ``key`` is in ``names`` (rewritten atomically under
    the file's flock); the number removed."""
    import fcntl

    from lowbit.storage.atomic import write_text_atomic

    path = Path(path)
    if not path.is_file():
        return 0
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        records = read_records(path)
        keep = [r for r in records if not (r.get("failed") and r.get(key) in names)]
        if len(keep) != len(records):
            write_text_atomic(path, "".join(
                json.dumps(_finite(r), sort_keys=True, allow_nan=False) + "\n" for r in keep))
        return len(records) - len(keep)
    finally:
        os.close(fd)


def sort_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records by bits per weight, largest first (baseline rows before quantized ones at a tie)."""
    return sorted(records, key=lambda r: (-(r.get("bits_per_weight") or 0.0),
                                          not r.get("baseline"), r["name"]))


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, float) and spec.endswith("f") and abs(v) >= 1e5:  # a collapsed model
        return format(v, spec[0] + ".2e" if spec[0] == "+" else ".2e")
    return format(v, spec)


def note(row: dict[str, Any]) -> str:
    """The row's note: the artifact mark (see docs/eval-json.md) or baseline role."""
    if row.get("artifact"):
        return artifact_note(row["on_grid_layers"], row["n_layers"])
    return ""


MD_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("scheme", "label", "s"),  # the row name, marked when activations are quantized
    ("method", "method", "s"),
    ("bits/w", "bits_per_weight", ".3f"),
    ("model bits/param", "model_bits_per_param", ".3f"),
    ("model MB", "model_mb", ".1f"),
    ("size MB", "disk_mb", ".1f"),
    ("PPL", "ppl", ".3f"),
    ("ΔPPL %", "ppl_change_pct", "+.2f"),
    ("KL mean", "kld_mean", ".2e"),
    ("KL median", "kld_median", ".2e"),
    ("KL p99", "kld_p99", ".2e"),
    ("top-1 %", "top1_pct", ".2f"),
    ("choice acc % [95% CI]", "choice", ""),
    ("same pick %", "choice_agree_pct", ".1f"),
    ("weight rel. err", "weight_rel_error", ".4f"),
    ("prefill tok/s", "prefill_tok_s", ".0f"),
    ("decode tok/s", "decode_tok_s", ".1f"),
    ("note", "note", ""),
)


def table_cells(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of the results table, one row a record, sorted; a column
    empty in every row (e.g. speed when not measured) is left out."""
    headers = [c[0] for c in MD_COLUMNS]
    rows = []
    for rec in sort_rows(records):
        r = summary_row(rec)
        cells = []
        for _, key, spec in MD_COLUMNS:
            if key == "choice":
                acc = _fmt(r["choice_acc_pct"], ".1f")
                cells.append(f"{acc} [{r['choice_ci_pct']}]" if acc else "")
            elif key == "note":
                cells.append(note(r))
            elif key == "ppl_change_pct" and r.get("baseline") and rec["name"] == BASELINE_LABEL:
                cells.append("ref")
            else:
                cells.append(_fmt(r[key], spec))
        rows.append(cells)
    keep = [i for i in range(len(headers)) if i == 0 or any(r[i] for r in rows)]
    return [headers[i] for i in keep], [[r[i] for i in keep] for r in rows]


BASELINE_LABEL = "float baseline (fp32)"
KEPT16_LABEL = "fp16 kept tensors only"


def settings_line(records: Sequence[dict[str, Any]]) -> str:
    """One sentence saying what was measured (from the first record's settings and plan)."""
    if not records:
        return ""
    rec = records[0]
    s = rec["settings"]
    parts = []
    for tname, t in (rec.get("texts") or {}).items():
        plan = t.get("plan", {})
        n_win = plan.get("n_windows")
        parts.append(f"{tname}: first {plan.get('n_stream_tokens')} tokens, "
                     f"{n_win} window{'s' if n_win != 1 else ''} of {plan.get('context')}, "
                     f"{plan.get('n_scored')} scored")
    ch = next(iter((rec.get("choice") or {}).items()), None)
    choice = (f"; multiple choice: {ch[1]['n_questions']} questions of {ch[0]}" if ch else "")
    speed = (f"; speed: prefill {s['speed_prompt_tokens']} tokens, decode "
             f"{s['speed_new_tokens']} tokens, median of {s['speed_repeats']}"
             if s.get("speed") else "; speed not measured")
    scheme = ("llama.cpp windows: second half of each window scored" if s.get("stride") is None
              else f"sliding windows, stride {s['stride']}")
    return "Perplexity/KL on " + "; ".join(parts) + f" ({scheme})" + choice + speed + "."


def render_markdown(records: Sequence[dict[str, Any]], *, title: str | None = None) -> str:
    """``results.md``: the table, what was measured, and the artifact notes."""
    headers, rows = table_cells(records)
    lines = []
    if title:
        lines += [f"# {title}", ""]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---" if i in (0, len(headers) - 1) else "---:"
                                for i in range(len(headers))) + "|")
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    lines += ["", settings_line(records)]
    lines += ["", "bits/w: bits per weight of the linear layers (output head excluded); "
              "model bits/param, model MB: the whole model, embeddings, head and norms included "
              "(tied tensors once), as a checkpoint stores its tensors; size MB: on disk (a "
              "checkpoint's files, else its tensors as stored); KL: KL(baseline ‖ model) per "
              "scored token over the full vocabulary, "
              "natural log; top-1: share of tokens where both models' most likely next token "
              "agree; same pick: share of questions answered as the baseline answered."]
    lines += ["", ARTIFACT_RULE]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("name", "scheme", "method", "bits_per_weight", "model_bits_per_param", "model_mb",
              "disk_mb", "ppl", "ppl_change_pct",
              "kld_mean", "kld_median", "kld_p99", "top1_pct", "choice_acc_pct", "choice_ci_pct",
              "choice_agree_pct", "weight_rel_error", "prefill_tok_s", "decode_tok_s",
              "peak_rss_mb", "artifact", "on_grid_layers", "exact_layers", "n_layers",
              "baseline")


def write_csv(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """``results.csv``: the summary figures of every record, sorted like the table."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for rec in sort_rows(records):
            w.writerow({k: summary_row(rec)[k] for k in CSV_FIELDS})
    return path

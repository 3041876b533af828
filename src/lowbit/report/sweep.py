"""The grid runner behind ``lowbit sweep``: quantize one model under each scheme, evaluate it
against the float baseline, append the record to ``DIR/results.jsonl`` as each finishes (a rerun
resumes), then write ``results.csv``, ``results.md``, the PNG plots and ``report.html``.

The baseline is loaded once; its logits (the scored rows of every window) are stored once under
``DIR/base-logits`` and removed when the sweep is complete, and its choice picks are computed once.
Two reference rows come first: the float baseline itself, and the baseline with only its kept
tensors (embeddings, norms) rounded to fp16, which is the KL floor of every quantized row (each of
them also keeps those tensors in fp16).
"""

from __future__ import annotations

import copy
import gc
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.eval.reference import prepare_reference
from lowbit.eval.settings import EvalSettings
from lowbit.eval.suite import evaluate
from lowbit.report.results import (
    BASELINE_LABEL,
    KEPT16_LABEL,
    RESULTS_JSONL,
    append_record,
    read_records,
    render_markdown,
    write_csv,
)
from lowbit.storage.lock import output_lock

log = logging.getLogger(__name__)
CACHE_DIR = "base-logits"


@dataclass(frozen=True)
class SweepOutput:
    """Where a sweep wrote its files, and every record (in the order they were made)."""

    folder: Path
    records: list[dict[str, Any]]
    results_md: Path
    results_csv: Path
    report_html: Path
    plots: list[Path]
    ran: list[str]  # names evaluated by this call (the others were already in results.jsonl)
    seconds: float


def row_names(schemes: Sequence[str], *, baseline_rows: bool = True) -> list[str]:
    """The rows a sweep makes: the two reference rows, then each scheme once, in order."""
    from lowbit.core.scheme import Scheme

    names = [BASELINE_LABEL, KEPT16_LABEL] if baseline_rows else []
    for s in schemes:
        Scheme.parse(s)  # a bad name fails before any work
        if s not in names:
            names.append(s)
    return names


def _check_settings(records: list[dict[str, Any]], settings: EvalSettings, path: Path,
                    model: str) -> None:
    want = settings.to_dict()
    for rec in records:
        if rec.get("settings") != want or rec.get("model") != model:
            raise ValueError(
                f"{path} holds results made with other settings or another model "
                f"({rec.get('model')!r}, {rec.get('settings')}); use another output folder, "
                "or pass --force to start it afresh"
            )


def _make_row(base: nn.Module, name: str, strict: bool = False
              ) -> tuple[nn.Module, dict[str, Any] | None]:
    """A fresh copy of the baseline for row ``name``: quantized (with its layer table), or with
    only its kept tensors rounded to fp16 (layer table computed later, against the baseline)."""
    from lowbit.pipeline.inmemory import quantize, round_kept_tensors

    model = copy.deepcopy(base)
    if name == KEPT16_LABEL:
        round_kept_tensors(model, torch.float16)
        model.lowbit_keep_dtype = torch.float16
        return model, None
    report = quantize(model, name, progress=False, strict=strict)
    return model, report.table()


def run_sweep(
    model: str,
    schemes: Sequence[str],
    out: str | Path,
    *,
    settings: EvalSettings | None = None,
    baseline_rows: bool = True,
    cache_logits: bool = True,
    keep_cache: bool = False,
    force: bool = False,
    progress: bool = True,
    title: str | None = None,
    loaded: tuple[nn.Module, Any] | None = None,
    strict: bool = False,
) -> SweepOutput:
    """Sweep ``schemes`` on ``model`` (a built-in name, folder or GGUF) into folder ``out``.

    Resumes from ``out/results.jsonl`` (rows already there are skipped; their settings must match).
    ``loaded`` passes an already loaded (model, tokenizer) for ``model`` (tests, notebooks).
    ``cache_logits=False`` reruns the baseline beside each row instead of storing its logits.
    The folder's lock is held throughout (:mod:`lowbit.storage.lock`); ``strict`` stops at a
    scale-format range problem (:mod:`lowbit.core.range`) instead of recording it.
    """
    t0 = time.perf_counter()
    settings = settings or EvalSettings()
    out = Path(out)
    names = row_names(schemes, baseline_rows=baseline_rows)
    with output_lock(out):  # the whole run: a second sweep on this folder fails at once
        out.mkdir(parents=True, exist_ok=True)
        jsonl = out / RESULTS_JSONL
        if force:
            jsonl.unlink(missing_ok=True)
            shutil.rmtree(out / CACHE_DIR, ignore_errors=True)
        records = read_records(jsonl, repair=True)
        _check_settings(records, settings, jsonl, model)
        done = {r["name"] for r in records}
        todo = [n for n in names if n not in done]
        ran: list[str] = []
        if todo:
            ran = _run_rows(model, todo, jsonl, settings, out, cache_logits, progress, loaded,
                            records, strict)
        records = read_records(jsonl)
        return _finish(model, names, records, out, keep_cache, title, ran, t0)


def _finish(model: str, names: list[str], records: list[dict[str, Any]], out: Path,
            keep_cache: bool, title: str | None, ran: list[str], t0: float) -> SweepOutput:
    """Drop the logits cache once every row is there, and write the tables and report."""
    if not keep_cache and all(n in {r["name"] for r in records} for n in names):
        shutil.rmtree(out / CACHE_DIR, ignore_errors=True)
    wanted = [r for r in records if r["name"] in names]
    seconds = time.perf_counter() - t0
    paths = write_report(wanted, out, title=title or f"lowbit sweep: {model}",
                         context={"model": model, "rows": len(wanted)})
    return SweepOutput(out, wanted, paths["md"], paths["csv"], paths["html"], paths["plots"],
                       ran, seconds)


def _run_rows(model_name: str, todo: list[str], jsonl: Path, settings: EvalSettings, out: Path,
              cache_logits: bool, progress: bool, loaded: tuple[nn.Module, Any] | None,
              records: list[dict[str, Any]], strict: bool = False) -> list[str]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="sweep", unit="scheme", disable=not progress)

    def step(what: str, row: str = "baseline") -> None:
        bar.set_description(f"{row}: {what}")
        log.info("%s: %s", row, what)

    step("load model")
    if loaded is None:
        import lowbit

        base, tok = lowbit.load_model(model_name)
    else:
        base, tok = loaded
    base.eval()
    ref = prepare_reference(base, tok, settings,
                            cache_dir=out / CACHE_DIR if cache_logits else None, step=step)
    ran = []
    try:
        for name in todo:
            if any(r["name"] == name for r in read_records(jsonl)):
                continue  # written meanwhile (an API caller without the lock): never twice
            t_row = time.perf_counter()
            if name == BASELINE_LABEL:
                rec = evaluate(base, tok, ref, settings, name=name, is_baseline=True,
                               step=lambda s, n=name: step(s, n))
            else:
                step("quantize" if name != KEPT16_LABEL else "round kept tensors", name)
                row, layers = _make_row(base, name, strict)
                rec = evaluate(row, tok, ref, settings, name=name,
                               scheme=None if name == KEPT16_LABEL else name, layers=layers,
                               step=lambda s, n=name: step(s, n))
                rec["baseline"] = name == KEPT16_LABEL
                del row
                gc.collect()
            rec["model"] = model_name
            rec["seconds"] = time.perf_counter() - t_row
            if append_record(jsonl, rec):
                records.append(rec)
                ran.append(name)
            bar.update(1)
    finally:
        bar.close()
    return ran


def write_report(records: Sequence[dict[str, Any]], out: str | Path, *, title: str,
                 context: dict[str, Any] | None = None) -> dict[str, Any]:
    """results.md, results.csv, the plots and report.html from ``records``, into ``out``."""
    from lowbit.report.html import write_html
    from lowbit.report.plots import write_plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "results.md"
    md.write_text(render_markdown(records, title=title), encoding="utf-8")
    csv_path = write_csv(records, out / "results.csv")
    plots = write_plots(records, out)
    html_path = write_html(records, plots, out / "report.html", title=title, context=context)
    return {"md": md, "csv": csv_path, "html": html_path, "plots": [p for p, _ in plots]}

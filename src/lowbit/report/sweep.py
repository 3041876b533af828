"""The grid runner behind ``lowbit sweep``: quantize one model under each (method, scheme) pair
(rows: :mod:`lowbit.report.rows`; data-aware methods all calibrate on the same tokens), evaluate
it against the float baseline, append the record to ``DIR/results.jsonl`` as each finishes (a rerun
resumes), then write ``results.csv``, ``results.md``, the PNG plots and ``report.html``.

The baseline is loaded once; its logits (the scored rows of every window) are stored once under
``DIR/base-logits`` and removed when the sweep is complete, and its choice picks are computed once.
Two reference rows come first: the float baseline itself, and the baseline with only its kept
tensors (embeddings, norms) rounded to fp16, which is the KL floor of every quantized row (each of
them also keeps those tensors in fp16).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from lowbit.eval.reference import prepare_reference
from lowbit.eval.settings import EvalSettings, record_method
from lowbit.report.results import (
    BASELINE_LABEL,
    RESULTS_JSONL,
    append_record,
    drop_records,
    failed_record,
    read_records,
    render_markdown,
    write_csv,
)
from lowbit.report.rows import DEFAULT_METHOD, Row, plan_rows
from lowbit.report.sweep_job import SweepShared, sweep_row
from lowbit.storage.lock import output_lock

if TYPE_CHECKING:
    from lowbit.calibration.windows import Calibration
    from lowbit.executor import Executor

log = logging.getLogger(__name__)
CACHE_DIR = "base-logits"
JOB_LOGS = "jobs"  # one log file a row, beside results.jsonl
MakeCalibration = Callable[[Any], "Calibration"]  # the tokenizer -> the calibration


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
    failed: list[dict[str, Any]]  # rows that failed every attempt (name, error, attempts)


def row_names(schemes: Sequence[str], *, baseline_rows: bool = True,
              methods: Sequence[str] = (DEFAULT_METHOD,), budgets: Sequence[str] = ()
              ) -> list[str]:
    """The names of the rows a sweep makes (see :func:`lowbit.report.rows.plan_rows`)."""
    return [r.name for r in plan_rows(schemes, methods, baseline_rows=baseline_rows,
                                      budgets=budgets)]


def _check_settings(records: list[dict[str, Any]], settings: EvalSettings, path: Path,
                    model: str, embedding: str | None = None) -> None:
    want = settings.to_dict()
    for rec in records:
        quantized = not rec.get("baseline") and rec.get("name") != BASELINE_LABEL
        if rec.get("settings") != want or rec.get("model") != model or (
                quantized and rec.get("embedding") != embedding):
            raise ValueError(
                f"{path} holds results made with other settings, another model or another "
                f"embedding scheme ({rec.get('model')!r}, {rec.get('settings')}, embedding "
                f"{rec.get('embedding')!r}); use another output folder, "
                "or pass --force to start it afresh"
            )


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
    methods: Sequence[str] = (DEFAULT_METHOD,),
    calibration: Calibration | MakeCalibration | None = None,
    budgets: Sequence[str] = (),
    candidates: Sequence[str] | None = None,
    embedding: str | None = None,
    executor: Executor | None = None,
) -> SweepOutput:
    """Sweep every (method, scheme) pair on ``model`` (a built-in name, folder or GGUF) into
    folder ``out``. Data-aware methods calibrate on ``calibration`` (a Calibration, or a
    function of the tokenizer that makes one; default: the default calibration text).

    Resumes from ``out/results.jsonl`` (rows already there are skipped; their settings must match).
    ``loaded`` passes an already loaded (model, tokenizer) for ``model`` (tests, notebooks).
    ``cache_logits=False`` reruns the baseline beside each row instead of storing its logits.
    The folder's lock is held throughout (:mod:`lowbit.storage.lock`); ``strict`` stops at a
    scale-format range problem (:mod:`lowbit.core.range`) instead of recording it.
    ``budgets`` adds a budgeted plan per budget (:mod:`lowbit.report.budget_rows`) chosen
    among ``candidates`` (default: llama.cpp's types, ``budget.plan.GGML_CANDIDATES``).
    ``embedding``: quantize the input embedding (and a head tied to it) of every quantized row
    with this scheme (recorded in each row; default: kept in fp16 like the other kept tensors).
    ``executor`` runs the rows (:mod:`lowbit.executor`; default in this process, one after
    another); a row that fails every attempt is recorded as failed and rerun by the next call.
    """
    t0 = time.perf_counter()
    settings = settings or EvalSettings()
    out = Path(out)
    rows = plan_rows(schemes, methods, baseline_rows=baseline_rows, budgets=budgets)
    names = [r.name for r in rows]
    with output_lock(out):  # the whole run: a second sweep on this folder fails at once
        out.mkdir(parents=True, exist_ok=True)
        jsonl = out / RESULTS_JSONL
        if force:  # results, the logits cache and the job logs
            jsonl.unlink(missing_ok=True)
            for folder in (CACHE_DIR, JOB_LOGS):
                shutil.rmtree(out / folder, ignore_errors=True)
        records = read_records(jsonl, repair=True)
        _check_settings(records, settings, jsonl, model, embedding)
        done = {r["name"] for r in records if not r.get("failed")}
        todo = [r for r in rows if r.name not in done]
        drop_records(jsonl, {r.name for r in todo})  # failed before: tried again now
        records = [r for r in records if r["name"] in done]
        ran = _run_rows(model, todo, jsonl, settings, out, cache_logits, progress, loaded,
                        records, strict, calibration, candidates, embedding,
                        executor) if todo else []
        records = read_records(jsonl)
        return _finish(model, names, records, out, keep_cache, title, ran, t0)


def _finish(model: str, names: list[str], records: list[dict[str, Any]], out: Path,
            keep_cache: bool, title: str | None, ran: list[str], t0: float) -> SweepOutput:
    """Drop the logits cache once every row is there, and write the tables and report (failed
    rows listed under the table)."""
    failed = [r for r in records if r["name"] in names and r.get("failed")]
    finished = {r["name"] for r in records if not r.get("failed")}
    if not keep_cache and all(n in finished for n in names):
        shutil.rmtree(out / CACHE_DIR, ignore_errors=True)
    wanted = [r for r in records if r["name"] in names and not r.get("failed")]
    seconds = time.perf_counter() - t0
    methods = sorted({m for m in (record_method(r) for r in wanted) if m})
    paths = write_report(wanted, out, title=title or f"lowbit sweep: {model}",
                         context={"model": model, "methods": ", ".join(methods),
                                  "rows": len(wanted)}, failed=failed)
    return SweepOutput(out, wanted, paths["md"], paths["csv"], paths["html"], paths["plots"],
                       ran, seconds, failed)


def _run_rows(model_name: str, todo: list[Row], jsonl: Path, settings: EvalSettings,
              out: Path, cache_logits: bool, progress: bool,
              loaded: tuple[nn.Module, Any] | None, records: list[dict[str, Any]],
              strict: bool, calibration: Calibration | MakeCalibration | None,
              candidates: Sequence[str] | None, embedding: str | None,
              executor: Executor | None) -> list[str]:
    """Prepare the shared inputs once, run the rows on ``executor`` (default: in this process)
    and append each record (or a failed row's error) to ``jsonl`` as it comes back."""
    from lowbit.executor import InProcessExecutor, Job, JobProgress

    executor = executor or InProcessExecutor()
    with JobProgress(len(todo), desc="sweep", unit="row", disable=not progress) as bar, \
            contextlib.closing(executor):  # stops a cluster warm_up started, even on errors
        shared = _prepare(model_name, todo, settings, out, cache_logits, loaded, records, jsonl,
                          strict, calibration, candidates, embedding, executor, bar)
        ran = []
        jobs = [Job(row.name, (row,)) for row in todo]
        for outcome in executor.run(sweep_row, shared, jobs, progress=bar,
                                    log_dir=out.resolve() / JOB_LOGS):
            if outcome.ok:
                rec = outcome.value
                rec["model"] = model_name
            else:
                log.warning("row %s failed after %d attempts: %s", outcome.key,
                            outcome.attempts, outcome.error)
                rec = failed_record(outcome.key, model_name, settings.to_dict(),
                                    outcome.error, outcome.attempts, embedding)
            if append_record(jsonl, rec):
                records.append(rec)
                ran.append(outcome.key)
    return ran


def _prepare(model_name: str, todo: list[Row], settings: EvalSettings, out: Path,
             cache_logits: bool, loaded: tuple[nn.Module, Any] | None,
             records: list[dict[str, Any]], jsonl: Path, strict: bool,
             calibration: Calibration | MakeCalibration | None,
             candidates: Sequence[str] | None, embedding: str | None, executor: Executor,
             bar: Any) -> SweepShared:
    """The driver's side, once: the baseline loaded, the calibration, the budget plans, the
    token plan and the baseline's logits (in ``out/base-logits``) and choice picks."""
    def step(what: str, row: str = "baseline") -> None:
        bar.note(f"{row}: {what}")
        log.info("%s: %s", row, what)

    step("load model")
    if loaded is None:
        import lowbit

        base, tok = lowbit.load_model(model_name)
    else:
        base, tok = loaded
    base.eval()
    # the workers start and import what a row needs while this process makes the baseline
    executor.warm_up(["lowbit.report.sweep_job", type(base).__module__])
    cal = _calibration(todo, tok, calibration, records, jsonl)
    plans = _plans(base, tok, todo, candidates, out, not bar.bar.disable, step, executor)
    # absolute: a worker reads the logits cache whatever its working directory
    ref = prepare_reference(base, tok, settings,
                            cache_dir=out.resolve() / CACHE_DIR if cache_logits else None,
                            step=step, progress=not bar.bar.disable)
    return SweepShared(ref, tok, settings, strict, cal, plans, embedding, executor.device)


def _plans(base: nn.Module, tok: Any, todo: list[Row], candidates: Sequence[str] | None,
           out: Path, progress: bool, step: Callable[..., None],
           executor: Executor | None = None) -> dict[str, Any]:
    """The budget rows' plans (one sensitivity measurement, cached), or {} when none."""
    labels = [r.name for r in todo if r.budget]
    if not labels:
        return {}
    from lowbit.budget.plan import GGML_CANDIDATES
    from lowbit.report.budget_rows import make_plans

    step("sensitivity for --budgets")
    return make_plans(base, tok, labels, list(candidates or GGML_CANDIDATES), out,
                      progress=progress, executor=executor)


def _calibration(todo: list[Row], tok: Any, given: Calibration | MakeCalibration | None,
                 records: list[dict[str, Any]], jsonl: Path) -> Calibration | None:
    """The calibration of the data-aware rows still to make (None when there are none); a
    ValueError when rows already in the results file calibrated on other tokens."""
    from lowbit.calibration import Calibration
    from lowbit.data import DEFAULT_CALIBRATION_TEXT
    from lowbit.methods import get_method

    if not any(r.method and get_method(r.method).data_aware for r in todo):
        return None
    if given is None:
        cal = Calibration.from_texts(tok, [DEFAULT_CALIBRATION_TEXT])
    else:
        cal = given if isinstance(given, Calibration) else given(tok)
    sha = cal.fingerprint()["sha256"]
    for rec in records:
        before = (rec.get("calibration") or {}).get("sha256")
        if before is not None and before != sha:
            raise ValueError(f"{jsonl}: row {rec['name']!r} was calibrated on other tokens "
                             f"({rec['calibration'].get('source')}); give the same calibration "
                             "options, another output folder, or --force")
    return cal


def write_report(records: Sequence[dict[str, Any]], out: str | Path, *, title: str,
                 context: dict[str, Any] | None = None,
                 failed: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """results.md, results.csv, the plots and report.html from ``records``, into ``out``
    (``failed``: rows that failed, listed under results.md's table)."""
    from lowbit.report.html import write_html
    from lowbit.report.plots import write_plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "results.md"
    text = render_markdown(records, title=title)
    if failed:
        text += "\n**Failed rows** (rerun the sweep to try them again):\n\n" + "".join(
            f"- {r['name']}: {r.get('error')} ({r.get('attempts')} attempts)\n" for r in failed)
    md.write_text(text, encoding="utf-8")
    csv_path = write_csv(records, out / "results.csv")
    plots = write_plots(records, out)
    html_path = write_html(records, plots, out / "report.html", title=title, context=context)
    return {"md": md, "csv": csv_path, "html": html_path, "plots": [p for p, _ in plots]}

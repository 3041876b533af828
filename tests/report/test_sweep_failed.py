"""A row that failed every attempt: recorded with its error, left out of the tables, listed
under them, and tried again by the next run (its record then replaced, never duplicated)."""

from __future__ import annotations

from lowbit.report.results import (
    RESULTS_JSONL,
    append_record,
    drop_records,
    failed_record,
    read_records,
)


def test_a_failed_row_is_tried_again_and_recorded_once(tiny_llama, data_dir, fast_settings,
                                                       tmp_path) -> None:
    from lowbit.report.sweep import run_sweep

    out = tmp_path / "s"
    out.mkdir()
    jsonl = out / RESULTS_JSONL
    settings = fast_settings.to_dict()
    assert append_record(jsonl, failed_record("int8-sym-channel", "tiny-llama", settings,
                                              "WorkerCrashedError: killed", 3))
    res = run_sweep("tiny-llama", ["int8-sym-channel"], out, settings=fast_settings,
                    progress=False, loaded=tiny_llama, baseline_rows=False)
    assert res.ran == ["int8-sym-channel"] and res.failed == []
    recs = read_records(jsonl)
    assert [r["name"] for r in recs] == ["int8-sym-channel"] and not recs[0].get("failed")
    assert "job int8-sym-channel attempt 1 started" in (
        out / "jobs" / "int8-sym-channel.log").read_text()
    assert drop_records(jsonl, {"int8-sym-channel"}) == 0  # only failed records are dropped


def test_failed_rows_are_listed_under_the_table_not_in_it(tiny_llama, data_dir, fast_settings,
                                                          tmp_path) -> None:
    from lowbit.report.sweep import run_sweep

    out = tmp_path / "s"
    first = run_sweep("tiny-llama", ["int8-sym-channel"], out, settings=fast_settings,
                      progress=False, loaded=tiny_llama, baseline_rows=False)
    assert first.failed == []
    append_record(out / RESULTS_JSONL, failed_record("int4-asym-g32", "tiny-llama",
                                                     fast_settings.to_dict(), "boom", 3))
    # a sweep that asks only for the finished row reports it; the failed one is not asked for
    again = run_sweep("tiny-llama", ["int8-sym-channel"], out, settings=fast_settings,
                      progress=False, loaded=tiny_llama, baseline_rows=False)
    assert again.ran == [] and again.failed == []
    from lowbit.report.sweep import write_report

    paths = write_report(again.records, out, title="t", failed=read_records(
        out / RESULTS_JSONL)[1:])
    md = paths["md"].read_text()
    assert "**Failed rows**" in md and "- int4-asym-g32: boom (3 attempts)" in md
    assert md.count("int4-asym-g32") == 1


def test_an_append_after_a_torn_last_line_is_not_glued_to_it(tmp_path) -> None:
    jsonl = tmp_path / "results.jsonl"
    assert append_record(jsonl, {"name": "int8-sym-channel", "ppl": 1.0})
    with jsonl.open("a") as f:  # a writer killed in the middle of its line
        f.write('{"name": "nf4-g64", "pp')
    assert append_record(jsonl, {"name": "nf4-g64", "ppl": 2.0})
    assert read_records(jsonl) == [{"name": "int8-sym-channel", "ppl": 1.0},
                                   {"name": "nf4-g64", "ppl": 2.0}]
    assert jsonl.read_text().count("\n") == 2

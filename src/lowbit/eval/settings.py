"""What an evaluation measures and on how much data, and the flat row that tables show of a record
(schema ``lowbit.eval/1``, documented in ``docs/eval-json.md``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lowbit import data

SCHEMA = "lowbit.eval/1"


@dataclass(frozen=True)
class EvalSettings:
    """What is measured and on how much data; stored in every record so results can be compared."""

    texts: tuple[str, ...] = data.EVAL_TEXTS
    choice: tuple[str, ...] = data.QUESTION_SETS
    context: int = 256
    stride: int | None = None  # None: llama.cpp's perplexity windows (second half scored)
    max_tokens: int | None = 1024  # per text, BOS included; None: the whole text
    max_questions: int | None = None  # per question file; None: all
    speed: bool = True
    speed_prompt_tokens: int = 64
    speed_new_tokens: int = 8
    speed_repeats: int = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON form (tuples as lists)."""
        d = asdict(self)
        d["texts"], d["choice"] = list(self.texts), list(self.choice)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalSettings:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["texts"], d["choice"] = tuple(d["texts"]), tuple(d["choice"])
        return cls(**d)



def record_method(rec: dict[str, Any]) -> str | None:
    """The method of a result record: its ``method``, ``rtn`` for a quantized row written
    before methods were recorded, None for a reference row."""
    if rec.get("method"):
        return rec["method"]
    return "rtn" if rec.get("scheme") else None


def summary_row(rec: dict[str, Any]) -> dict[str, Any]:
    """The flat figures of a record that tables and plots show (None where not measured)."""
    s = rec.get("summary") or {}
    ch = next(iter((rec.get("choice") or {}).values()), None)
    sp = rec.get("speed") or {}
    mem = rec.get("memory") or {}
    we = rec.get("weight_error") or {}
    from lowbit.eval.artifact import on_grid_tensors

    grid = on_grid_tensors({n: v.get("rel_error") for n, v in (we.get("layers") or {}).items()})
    return {
        "name": rec["name"],
        "label": rec["name"] + activation_mark(rec),
        "scheme": rec.get("scheme"),
        "method": record_method(rec),
        "bits_per_weight": rec.get("bits_per_weight"),
        "disk_mb": rec["disk_bytes"] / 1e6 if rec.get("disk_bytes") is not None else None,
        "model_mb": rec["model_bytes"] / 1e6 if rec.get("model_bytes") is not None else None,
        "model_bits_per_param": rec.get("model_bits_per_param"),
        "ppl": s.get("ppl"),
        "ppl_change_pct": 100 * s["ppl_change"] if "ppl_change" in s else None,
        "kld_mean": s.get("kld_mean"),
        "kld_median": s.get("kld_median"),
        "kld_p99": s.get("kld_p99"),
        "top1_pct": 100 * s["top1_agreement"] if "top1_agreement" in s else None,
        "choice_acc_pct": 100 * ch["accuracy"] if ch else None,
        "choice_ci_pct": (f"{100 * ch['accuracy_low']:.0f}-{100 * ch['accuracy_high']:.0f}"
                          if ch else None),
        "choice_agree_pct": (100 * ch["agreement"] if ch and ch.get("agreement") is not None
                             else None),
        "weight_rel_error": we.get("mean_rel"),
        "prefill_tok_s": sp.get("prefill_tokens_per_s"),
        "decode_tok_s": sp.get("decode_tokens_per_s"),
        "peak_rss_mb": mem["peak_rss_bytes"] / 1e6 if mem else None,
        # recomputed from the layer table, so older records follow today's rule too
        "artifact": bool(grid) and not rec.get("baseline", False),
        "on_grid_layers": len(grid),
        "exact_layers": len(rec.get("exact_layers") or []),
        "n_layers": len(we.get("layers") or {}),
        "baseline": rec.get("baseline", False),
    }


def activation_mark(rec: dict[str, Any]) -> str:
    """`` [A8 int8/token t=6]``-style mark of a record whose layers quantize activations (what
    the sweep's scheme column and plot labels add), empty for a weight-only one."""
    acts = rec.get("activations") or {}
    kinds = sorted({f"{a['format'].split('-')[0]}/"
                    f"{'token' if a['granularity'] == 'token' else 'static'}"
                    + ("" if a.get("threshold") is None else f" t={a['threshold']:g}")
                    for a in acts.values()})
    return f" [A8 {', '.join(kinds)}]" if kinds else ""

"""The results file of methods_vs_peers: header, one table per model, goals, missing rows."""

from __future__ import annotations

from collections.abc import Callable

HEAD = ["tool", "method", "scheme", "bits/weight (Linear)", "ppl", "ΔPPL", "KL mean", "KL p99",
        "top-1 agreement", "weight rel. L2", "quantize s", "note"]


def _f(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _note(r: dict) -> str:
    parts = [r.get("artifact") or ""]
    s = r.get("settings", {})
    if "types" in s:
        parts.append(s["types"])
    if s.get("same_linear_bytes_as_llamacpp"):
        parts.append("Linear bytes identical to llama.cpp's (scores are that file's)")
    elif s.get("same_linear_bytes_as_llamacpp") is False:
        parts.append("Linear bytes differ from llama.cpp's; embeddings quantized by the preset")
    if r["method"] == "awq":
        parts.append("scales folded: weight error not comparable")
    if r["tool"] == "llm-compressor":
        parts.append(f"pipeline {s.get('pipeline')}"
                     + (f", n_grid {s['n_grid']}" if "n_grid" in s else ""))
    return "; ".join(p for p in parts if p)


def table(rows: list[dict]) -> list[str]:
    """One markdown table of the finished rows of one model."""
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * 3 + "---:|" * 8 + "---|"]
    for r in rows:
        werr = None if r["method"] == "awq" else r.get("weight_rel_l2")
        lines.append("| " + " | ".join([
            r["tool"], r["method"], r["scheme"], _f(r.get("bits"), ".3f"), _f(r["ppl"], ".2f"),
            f"{r['ppl'] - r['ppl_base']:+.2f}", _f(r["kl_mean"], ".4f"), _f(r["kl_p99"], ".3f"),
            _f(r["top1"], ".3f"), _f(werr, ".4f"), _f(r.get("seconds"), ".1f"), _note(r)])
            + " |")
    return lines


def _pick(rows: list[dict], **want) -> list[dict]:
    return [r for r in rows if all(
        (v(r[k]) if callable(v) else r[k] == v) for k, v in want.items())]


def _ratio(a: dict | None, b: dict | None, key: Callable[[dict], float]) -> str:
    if a is None or b is None:
        return "not measured (a row is missing)"
    return f"{key(a) / key(b):.3f} ({a['tool']} {a['method']} {a['scheme']} / " \
           f"{b['tool']} {b['method']} {b['scheme']})"


def _first(rows: list[dict]) -> dict | None:
    return rows[0] if rows else None


def _best(rows: list[dict], key: Callable[[dict], float]) -> dict | None:
    return min(rows, key=key) if rows else None


def goals(done: list[dict]) -> list[str]:
    """The issue's goals, each computed from the finished rows."""
    kl = lambda r: r["kl_mean"]  # noqa: E731
    dppl = lambda r: r["ppl"] - r["ppl_base"]  # noqa: E731
    out = []
    for model in sorted({r["model"] for r in done}):
        rows = _pick(done, model=model)
        own = _pick(rows, tool="lowbit")
        for group in (64, 128):
            g = f"-g{group}"
            rtn = _first(_pick(own, method="rtn", scheme=f"int4-asym{g}-zpint"))
            best = _best(_pick(own, method=lambda m: m in ("gptq", "awq", "hqq"),
                               scheme=lambda s, g=g: s.startswith(f"int4-asym{g}")), kl)
            if rtn or best:
                out.append(f"- {model} int4{g}: best lowbit method KL / RTN KL = "
                           f"{_ratio(best, rtn, kl)} (goal ≤ 0.6)")
        q40 = _first(_pick(rows, tool="llama.cpp", method="imatrix", scheme="Q4_0"))
        best45 = _best([r for r in own if r.get("bits") and r["bits"] <= 4.5], kl)
        out.append(f"- {model}: best lowbit ≤ 4.5 bits/weight vs llama.cpp Q4_0+imatrix, KL "
                   f"ratio = {_ratio(best45, q40, kl)} (goal < 1)")
        for r in _pick(rows, tool="llm-compressor"):
            mine = _first(_pick(own, method=r["method"], scheme=r["scheme"]))
            out.append(f"- {model} {r['scheme']}: lowbit {r['method']} KL / llm-compressor "
                       f"{r['method']} KL = {_ratio(mine, r, kl)} (goal ≤ 1.05)")
        for r in _pick(rows, tool="hqq"):
            mine = _first(_pick(own, method="hqq", scheme=r["scheme"]))
            out.append(f"- {model} {r['scheme']}: lowbit HQQ weight error / hqq package's = "
                       f"{_ratio(mine, r, lambda x: x['weight_rel_l2'])} (goal ≤ 1.02)")
        rtn3 = _first(_pick(own, method="rtn", scheme="int3-asym-g64-zpint"))
        best3 = _best(_pick(own, method=lambda m: m != "rtn",
                            scheme=lambda s: s.startswith("int3-asym-g64")), dppl)
        if rtn3 or best3:
            out.append(f"- {model} int3-g64: best ΔPPL / RTN ΔPPL = "
                       f"{_ratio(best3, rtn3, dppl)} (goal < 0.5)")
    return out


def render(done: list[dict], missing: list[str], header: list[str]) -> str:
    """The whole results file."""
    from lowbit.eval.artifact import RULE

    lines = ["# Methods vs peers: lowbit's RTN/GPTQ/AWQ/HQQ, llm-compressor, hqq, llama.cpp",
             "", *header, ""]
    for model in dict.fromkeys(r["model"] for r in done):
        rows = _pick(done, model=model)
        lines += [f"## {model} (float perplexity {rows[0]['ppl_base']:.2f})", "",
                  *table(rows), ""]
    lines += ["## Goals (computed from the rows above)", "", *goals(done), "",
              "## Configured rows not measured", ""]
    lines += [f"- {m}" for m in missing] or ["- none"]
    lines += ["", f"note: {RULE}", ""]
    return "\n".join(lines)

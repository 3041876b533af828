"""The tables, goal checks and size-vs-KL plot of benchmarks/budget_vs_llamacpp.py."""

from __future__ import annotations

from pathlib import Path

from lowbit.report.table import render_table

HEAD = ["model", "size of", "file", "imatrix", "scored by", "MB", "ppl", "KL mean", "KL p99",
        "top-1", "note"]
GEMMA_FLAG = (
    "Gemma-3-270M's float baseline is llama.cpp's F32 dequantization of a Q4_K_M file: a tensor "
    "that a row stores in the type that file gave it comes back on its own grid and costs "
    "almost nothing. Such rows are artifacts; the note column "
    "marks every row (of either model) where lowbit's artifact rule finds a Linear tensor "
    "already on the grid, and only those rows carry the flag.")


def _cells(r: dict) -> list:
    return [r["model"], r["size_of"], r["file"], r["imatrix"], r["evaluator"],
            f"{r['bytes'] / 1e6:.2f}", f"{r['ppl']:.4f}", f"{r['kl']:.5f}", f"{r['kl99']:.4f}",
            f"{r['top1']:.2%}", r["note"]]


def _find(rows: list[dict], **want) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in want.items())), None)


def goals(rows: list[dict]) -> list[str]:
    """The issue's two quality goals, judged on the rows (Markdown bullets)."""
    out = []
    for model in sorted({r["model"] for r in rows if r["variant"] == "ggml"}):
        for im_theirs, im_ours in (("none", "none"), ("llama-imatrix", "lowbit imatrix")):
            for preset in dict.fromkeys(r["size_of"] for r in rows if r["model"] == model):
                a = _find(rows, variant="ggml", model=model, size_of=preset,
                          kind="llama.cpp preset", imatrix=im_theirs)
                ours = [r for r in rows if r["variant"] == "ggml" and r["model"] == model
                        and r["size_of"] == preset and r["kind"] == "budget ggml"
                        and r["imatrix"] == im_ours]
                for b in ours if a else []:
                    won = "lower" if b["kl"] < a["kl"] else "NOT lower"
                    out.append(f"- {model}, {preset} size, imatrix {im_theirs}/{im_ours}: "
                               f"{b['file']} KL {b['kl']:.5f} vs llama.cpp's {a['kl']:.5f} "
                               f"({won}; scored by llama.cpp){_flag(a, b)}")
    for preset in dict.fromkeys(r["size_of"] for r in rows if r["variant"] == "any"):
        got = {k: _find(rows, variant="any", size_of=preset, kind=k)
               for k in ("budget any", "budget ggml", "best uniform")}
        if got["budget any"] is None or got["budget ggml"] is None:
            continue
        a = got["budget any"]
        rivals = [got["budget ggml"]] + ([got["best uniform"]] if got["best uniform"] else [])
        beats = all(a["kl"] < r["kl"] for r in rivals)
        figs = ", ".join(f"{r['file']} {r['kl']:.5f}" for r in rivals)
        out.append(f"- SmolLM2, {preset} size: any-scheme plan KL {a['kl']:.5f} vs {figs} "
                   f"({'beats both' if beats else 'does NOT beat both'}; scored by lowbit)")
    return out


def refine_section(rows: list[dict]) -> list[str]:
    """The refine pass's rows (``--parts refine``) and their gain over the allocated plan."""
    if not rows:
        return []
    gains = []
    for preset in dict.fromkeys(r["size_of"] for r in rows):
        base = _find(rows, size_of=preset, kind="refine base")
        for r in rows:
            if base and r["size_of"] == preset and r["kind"] == "refined":
                gains.append(f"- {preset} size, {r['file'].rsplit('+ ', 1)[-1]}: KL "
                             f"{base['kl']:.5f} -> {r['kl']:.5f} "
                             f"({(r['kl'] - base['kl']) / base['kl']:+.1%}; scored by lowbit)")
    return [
        "## Refine pass (interactions): SmolLM2-135M, scored by lowbit's evaluator", "",
        "The ggml-only budgeted plan as allocated (KL taken as additive), then refined by "
        "`lowbit quantize --refine-swaps N`'s pass: the whole plan's KL measured on "
        "sensitivity's calibration windows, then N byte-neutral swaps per round measured in "
        "the plan's context, the best kept, 2 rounds. The note gives the calibration-window "
        "figures; the columns are the evaluation windows. MB: tensor bytes as stored.", "",
        render_table(HEAD, [_cells(r) for r in rows], markdown=True), "",
        *gains, ""]


def _flag(*rows: dict) -> str:
    return " [artifact flag on a row]" if any("ARTIFACT" in r["note"] for r in rows) else ""


def render(rows: list[dict], info: dict, text: str, plot: str) -> str:
    """The results file: what was measured, both tables, the goals and the Gemma flag."""
    ggml = [r for r in rows if r["variant"] == "ggml"]
    anys = [r for r in rows if r["variant"] == "any"]
    facts = "; ".join(f"{k}: {v}" for k, v in sorted(info.items()))
    return "\n".join([
        "# Budgeted plans vs llama.cpp's presets", "",
        "Produced by `benchmarks/budget_vs_llamacpp.py` (one run per model on a shared 2-core "
        f"machine, 1 thread). Every row is scored on windows of 512 tokens of {text} "
        "(second halves scored; how many tokens each variant scored is in the run facts), "
        "KL(float || quantized) per token. Budgets are the "
        "exact tensor bytes of llama.cpp's preset file (less its norms' F32-vs-F16 "
        "difference). Importance matrices on both sides, from the same 8 windows of 512 "
        "tokens of the calibration text: llama-imatrix's for llama-quantize, lowbit's own "
        "(`measure_imatrix` on the float model) for the budgeted plan quantized with "
        "`rtn-imatrix`, whose ggml types take llama.cpp's weighted quantizer (the same plan as "
        "the imatrix-free row: sensitivity is measured with plain rtn encodes). "
        "Sensitivity for the plans is measured "
        "on 2 windows of 128 calibration tokens; the times in the run facts are those runs' "
        "own, read from the sensitivity cache where an earlier run had measured it (a cold "
        "measurement's time: `sensitivity.md`, `benchmarks/sensitivity_speed.py`). "
        f"Run facts: {facts}.", "",
        "## ggml types only: GGUF files scored by llama.cpp", "",
        "MB: the GGUF file.", "",
        render_table(HEAD, [_cells(r) for r in ggml], markdown=True), "",
        "## Any lowbit scheme: models scored by lowbit's evaluator (SmolLM2-135M)", "",
        "MB: the whole model's tensor bytes as a lowbit checkpoint stores them. Presets are "
        "lowbit's reproduction of llama.cpp's per-tensor types (`preset_plan`); the budget is "
        "that plan's bytes. `best uniform` repeats the uniform row of least KL within +1% of "
        "the budget.", "",
        render_table(HEAD, [_cells(r) for r in anys], markdown=True), "",
        *refine_section([r for r in rows if r["variant"] == "refine"]),
        "## Goals", "", *goals(rows), "",
        "## Gemma-3-270M flag", "",
        *([] if any(r["model"].startswith("gemma") for r in rows) else [
            "No Gemma-3-270M rows are stored yet (`--models gemma-3-270m` runs them; on the "
            "shared machine of this run its llama.cpp scoring was too slow to fit the session, "
            "so it was left out). When they are:", ""]),
        GEMMA_FLAG, "",
        f"Size vs KL: `{plot}` (one panel per model and evaluator).", "",
    ])


def _series(r: dict) -> str:
    """The legend entry of a row: its kind, or for a budgeted plan its file label."""
    return r["file"] if r["kind"].startswith("budget") else r["kind"]


def write_plot(rows: list[dict], path: Path) -> Path:
    """KL mean against size, one panel per (model, evaluator), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lowbit.storage.atomic import atomic_path

    groups = list(dict.fromkeys((r["model"], r["evaluator"]) for r in rows))
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 4.2), squeeze=False)
    markers = {"uniform": "o", "llama.cpp preset": "s", "budget ggml": "^", "budget any": "*"}
    for ax, (model, evaluator) in zip(axes[0], groups):
        mine = [r for r in rows if r["model"] == model and r["evaluator"] == evaluator
                and r["kind"] in markers]
        series = dict.fromkeys((r["kind"], _series(r), r["imatrix"]) for r in mine)
        for i, (kind, label, im) in enumerate(series):
            pts = [r for r in mine if (r["kind"], _series(r), r["imatrix"]) == (kind, label, im)]
            color = f"C{i}"
            ax.scatter([r["bytes"] / 1e6 for r in pts], [r["kl"] for r in pts],
                       marker=markers[kind], s=40, edgecolors=color,
                       facecolors="none" if im != "none" else color,
                       label=label + ("" if im == "none" else f" + {im}"))
            if kind == "uniform":
                for r in pts:
                    ax.annotate(r["file"].removeprefix("uniform "),
                                (r["bytes"] / 1e6, r["kl"]), fontsize=6)
        ax.set_yscale("log")
        ax.set_xlabel("MB (GGUF file)" if evaluator == "llama.cpp" else "MB (tensor bytes)")
        ax.set_ylabel("mean KL per token")
        ax.set_title(f"{model}, scored by {evaluator.split(' ')[0]}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
    finally:
        plt.close(fig)
    return path

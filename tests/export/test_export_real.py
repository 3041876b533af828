"""SmolLM2 exported to GGUF: llama.cpp loads it, generates, and its perplexity on 765 scored
tokens agrees with transformers' on the same weights (read back from the file) within 0.5 %."""

from __future__ import annotations

import pytest

from lowbit.runtimes import llamacpp

pytestmark = [
    pytest.mark.slow,
    pytest.mark.llamacpp,
    pytest.mark.skipif(not llamacpp.available(),
                       reason=llamacpp.why_unavailable() or "llama.cpp available"),
]
# The bound. Measured gaps (llama.cpp / transformers - 1) on these 765 tokens:
# see the assertion messages; llama.cpp rounds activations to 8 bits in quantized matmuls.
PPL_REL_TOL = 0.005


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K_M"])
def test_smollm2_export_runs_in_llamacpp(smollm2, tmp_path, qtype):
    from lowbit.data import read_text
    from lowbit.eval import make_windows, perplexity
    from lowbit.export import to_gguf
    from lowbit.models import load_model
    from lowbit.runtimes.llamacpp_model import LlamaCppModel

    _, tok = smollm2
    report = to_gguf("smollm2-135m", tmp_path / f"smol-{qtype}.gguf", qtype=qtype)
    windows = make_windows(tok, read_text("sotu-2000-2015.txt"), context=512, max_tokens=1536)
    assert windows.n_scored >= 512
    with LlamaCppModel(report.path, n_ctx=512, threads=1) as llm:
        ppl_cpp = perplexity(llm, windows, progress=False).perplexity
        text = llm.llm.generate("The capital of France is", max_new_tokens=12)
    reread, _ = load_model(report.path)
    ppl_hf = perplexity(reread, windows, progress=False).perplexity
    gap = ppl_cpp / ppl_hf - 1
    assert abs(gap) < PPL_REL_TOL, f"{qtype}: llama.cpp {ppl_cpp:.4f} vs lowbit {ppl_hf:.4f}"
    assert "Paris" in text, text

"""The built-in models exported to GGUF from their cached Hugging Face folders with the GGUF
origin hidden (linked without ``lowbit_source.json``), so the metadata and tokenizer are built
from config.json and tokenizer.json: llama.cpp tokenizes the evaluation text to transformers'
ids, the vocabulary equals the original GGUF's, and llama.cpp's perplexity on the file is within
0.5 % of lowbit's evaluator on the float model."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from lowbit.runtimes import llamacpp

pytestmark = [
    pytest.mark.slow,
    pytest.mark.llamacpp,
    pytest.mark.skipif(not llamacpp.available(),
                       reason=llamacpp.why_unavailable() or "llama.cpp available"),
]
# The bound, on an F16 export: the file's weights are then the float model's up to fp16
# rounding. A Q8_0 export adds requantization and llama.cpp's 8-bit activations: Gemma's Q8_0
# file measured -0.89 % against lowbit's float on these 512 tokens. All measured gaps are in
# benchmarks/results/gguf_from_hf.md.
PPL_REL_TOL = 0.005
N_TOKENS = 512
FIXTURES = {"smollm2-135m": "smollm2", "gemma-3-270m": "gemma"}


def _hidden(name: str, work: Path) -> Path:
    from lowbit.models import builtin_dir
    from lowbit.models.conversion import MARKER

    folder = work / name
    folder.mkdir()
    for f in builtin_dir(name).iterdir():
        if f.name != MARKER:
            (folder / f.name).symlink_to(f)
    return folder


def _eval_text() -> str:
    from lowbit.data import read_text

    runs = "a  b   c\t\td\n\n\ne    f"  # runs of spaces, tabs and newlines (Gemma has pieces)
    return (read_text("sotu-2000-2015.txt")[:20000] + runs
            + read_text("moby-dick-ch061-100.txt")[:20000])


@pytest.mark.parametrize("name", list(FIXTURES))
def test_builtin_folder_without_origin_exports_for_llamacpp(name, request, tmp_path):
    from lowbit.data import read_text
    from lowbit.eval import make_windows, perplexity
    from lowbit.export import to_gguf
    from lowbit.models import BUILTINS
    from lowbit.models.sources import resolve_source
    from lowbit.runtimes.llamacpp_model import LlamaCppModel

    model, tok = request.getfixturevalue(FIXTURES[name])  # the same float weights, loaded once
    folder = _hidden(name, tmp_path)
    assert resolve_source(folder).kind == "hf"
    report = to_gguf(folder, tmp_path / f"{name}.gguf", qtype="F16")
    fields = gguf.GGUFReader(report.path).fields
    origin = gguf.GGUFReader(BUILTINS[name].fetch(tmp_path)).fields
    for key in ("tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token"):
        if key in origin:
            assert fields[key].contents() == origin[key].contents(), key
    # Gemma's sentencepiece has 30 pieces that are runs of spaces ("  " ...); transformers'
    # GGUF reader wrote them into tokenizer.json as runs of "▁", the spelling every other piece
    # uses, so the folder (and its export) differs from the original GGUF exactly there
    assert fields["tokenizer.ggml.tokens"].contents() == [
        t.replace(" ", "\u2581") for t in origin["tokenizer.ggml.tokens"].contents()]

    text = _eval_text()
    windows = make_windows(tok, read_text("sotu-2000-2015.txt"), context=N_TOKENS,
                           max_tokens=N_TOKENS)
    with LlamaCppModel(report.path, n_ctx=N_TOKENS, threads=1) as llm:
        assert llm.llm.tokenize(text) == tok(text)["input_ids"]
        ppl_cpp = perplexity(llm, windows, progress=False).perplexity
    ppl_lowbit = perplexity(model, windows, progress=False).perplexity
    gap = ppl_cpp / ppl_lowbit - 1
    assert abs(gap) < PPL_REL_TOL, f"llama.cpp {ppl_cpp:.4f} vs lowbit {ppl_lowbit:.4f}"

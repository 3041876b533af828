"""The demo's scheme list and its judgement of the article's claims (on hand-made rows)."""

from __future__ import annotations

from lowbit.commands.demo import DEMO_SCHEMES, DEMO_SETTINGS, check_claims
from lowbit.core.scheme import Scheme


def row(name, ppl, kld, base_ppl=10.0, top1=0.9):
    return {"name": name, "summary": {"ppl": ppl, "ppl_change": ppl / base_ppl - 1,
                                      "kld_mean": kld, "top1_agreement": top1}}


def test_demo_schemes_parse_and_cover_the_article():
    for s in DEMO_SCHEMES:
        Scheme.parse(s)
    for g in ("channel", "g32", "g64", "g128", "g256"):
        assert f"int4-sym-{g}" in DEMO_SCHEMES and f"int4-asym-{g}" in DEMO_SCHEMES
    assert {"nf4-g64", "mxfp4", "nvfp4", "int2-asym-g64"} <= set(DEMO_SCHEMES)
    assert not DEMO_SETTINGS.speed


def test_claims_are_judged_from_the_rows():
    recs = [row("int8-sym-channel", 10.005, 1e-4), row("int8-asym-channel", 10.02, 1e-4),
            row("int4-sym-g32", 11.0, 0.2), row("int4-asym-g32", 10.5, 0.1),
            row("int4-sym-g64", 11.0, 0.2), row("int4-asym-g64", 11.5, 0.3),
            row("int2-asym-g64", 900.0, 4.0)]
    text = "\n".join(check_claims(recs))
    # 10.005 is +0.05%, under the 0.1% line; 10.02 is +0.2%, over it
    assert "8-bit adds under 0.1% perplexity: PARTLY CONFIRMED, 1/2 schemes" in text
    assert "PARTLY CONFIRMED, 1/2 granularities" in text
    assert "2-bit collapses" in text and "CONFIRMED (int2-asym-g64 PPL 900 (+8.9e+03%)" in text


def test_sweep_quantizes_the_embedding_as_the_demo_asks(tiny_tokenizer, data_dir, fast_settings,
                                                        tmp_path):
    """The demo's embedding rule (llama.cpp's q4_k_m type for a tied token_embd) reaches every
    quantized row of the sweep: recorded, stored once with its head, and the whole model smaller
    than with an fp16 table; a rerun asking for another embedding scheme is refused."""
    import pytest
    from tests.test_embeddings import _tied_llama

    from lowbit.commands.demo import demo_embedding, embedding_note
    from lowbit.report.results import read_records
    from lowbit.report.sweep import run_sweep

    model = _tied_llama(tiny_tokenizer)
    scheme = demo_embedding(model)
    assert scheme == "q8_0"  # q6_k by the output rule, q8_0 for rows not whole 256-blocks
    assert "q8_0" in embedding_note(scheme)
    records = {}
    for emb in (None, scheme):
        out = tmp_path / str(emb)
        run_sweep("tiny-tied", ["int4-asym-g32"], out, settings=fast_settings, progress=False,
                  loaded=(model, tiny_tokenizer), embedding=emb)
        records[emb] = {r["name"]: r for r in read_records(out / "results.jsonl")}
    quant, plain = records[scheme]["int4-asym-g32"], records[None]["int4-asym-g32"]
    assert quant["embedding"] == "q8_0" and "embedding" not in plain
    table = model.model.embed_tokens.weight.numel()
    assert plain["model_bytes"] - quant["model_bytes"] == table * 2 - table * 34 // 32
    assert not any("embedding" in r for n, r in records[scheme].items() if n != "int4-asym-g32")
    with pytest.raises(ValueError, match="embedding scheme"):
        run_sweep("tiny-tied", ["int4-asym-g32", "int8-sym-channel"], tmp_path / "q8_0",
                  settings=fast_settings, progress=False, loaded=(model, tiny_tokenizer),
                  embedding="q4_0")

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

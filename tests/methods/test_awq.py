"""AWQ: the scale search against a plain float64 transcription on explicit activations
(tests/methods/reference_awq.py), folding keeps the model's function, the output error against
RTN's, the block step through the in-memory driver, a checkpoint and the CLI."""

from __future__ import annotations

import copy

import pytest
import torch

import lowbit
from lowbit.calibration import Calibration
from lowbit.core.scheme import Scheme
from lowbit.methods import get_method, register_method
from lowbit.methods.awq import (
    clip_weight,
    fold_groups,
    fold_scales,
    output_loss,
    rtn_weight,
    search_scales,
)
from lowbit.methods.rtn import quantize_rtn
from tests.methods.reference_awq import reference_search


def problem(n: int = 128, out: int = 48, seed: int = 1, outliers: int = 4):
    """A weight and correlated activations with a few outlier input channels (x30), as AWQ's
    salient channels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2048, n, generator=g) @ torch.randn(n, n, generator=g) * 0.2 \
        + torch.randn(2048, n, generator=g)
    x[:, torch.randperm(n, generator=g)[:outliers]] *= 30.0
    return torch.randn(out, n, generator=g) * 0.02, x, x.T @ x / x.shape[0]


def awq_weight(w: torch.Tensor, scheme: str, x: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """AWQ on one Linear with its inputs: search, fold into the weight, clip, round, unfold."""
    sc = Scheme.parse(scheme)
    h = x.T @ x / x.shape[0]
    s, _, _ = search_scales([w], [sc], h)
    hs = h / (s[:, None] * s[None, :])  # the Hessian of the folded inputs x / s
    ws = w * s
    if clip:
        ws = clip_weight(ws, sc, hs)
    return quantize_rtn(ws, sc).dequantize() / s


def test_search_matches_the_plain_transcription() -> None:
    # float32 Hessian and float32 loss against float64 on explicit activations: the losses agree
    # to 1e-4 relative (measured: 3e-7; float32 sums of 128x128 products).
    w, x, h = problem()
    w2 = torch.randn(16, 128, generator=torch.Generator().manual_seed(3)) * 0.05
    schemes = ["int4-asym-g32", "int3-sym-g32"]
    _, alpha, losses = search_scales([w, w2], [Scheme.parse(s) for s in schemes], h, grid=10)
    ref_alpha, ref_losses = reference_search([w, w2], schemes, x, grid=10)
    assert torch.allclose(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-4)
    assert alpha == ref_alpha and alpha > 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_search_includes_rtn_and_never_loses_to_it(seed: int) -> None:
    w, x, h = problem(seed=seed)
    sc = Scheme.parse("int4-asym-g32")
    s, alpha, losses = search_scales([w], [sc], h)
    rtn = float(output_loss(w, rtn_weight(w, sc, "w"), h))
    assert losses[0] == rtn  # α = 0 is s = 1 exactly: the same codes as RTN
    assert min(losses) <= rtn and losses[round(alpha * 20)] == min(losses)


def test_alpha_is_zero_when_scaling_cannot_help() -> None:
    # Every input channel equally active: s = 1 at every α, all losses tie, and the tie goes
    # to α = 0 (plain RTN). A diagonal Hessian with a dead channel: the floor keeps s finite.
    w, _, _ = problem()
    h = torch.eye(128) * 3.0
    s, alpha, losses = search_scales([w], [Scheme.parse("int4-asym-g32")], h)
    assert alpha == 0.0 and torch.equal(s, torch.ones(128)) and len(set(losses)) == 1
    h[5, 5] = 0.0
    s, _, _ = search_scales([w], [Scheme.parse("int4-asym-g32")], h)
    assert bool(torch.isfinite(s).all()) and bool((s > 0).all())


@pytest.mark.parametrize("scheme", ["int4-asym-g32", "int3-asym-g32", "int4-sym-g64",
                                    "int3-asym-g32-zpint"])
def test_lowers_the_output_error_of_rtn(scheme: str) -> None:
    # ||(W - Ŵ) Xᵀ|| on correlated inputs with 4 outlier channels: measured ratios AWQ/RTN
    # 0.30-0.48 here (scales alone, no clipping, 0.33-0.52); 0.9 requires a real gain on every
    # scheme while leaving room for other seeds.
    w, x, _ = problem()
    rtn = float(((w - quantize_rtn(w, scheme).dequantize()) @ x.T).norm())
    for clip in (False, True):
        err = float(((w - awq_weight(w, scheme, x, clip)) @ x.T).norm())
        assert err < 0.9 * rtn, (clip, err / rtn)


def test_clipping_never_raises_the_per_group_loss() -> None:
    # r = 1 (no clipping) is a candidate: each (row, group) loss is at most RTN's.
    w, _, h = problem(outliers=0)
    sc = Scheme.parse("int3-asym-g32")
    clipped = clip_weight(w, sc, h)

    def per_group(q: torch.Tensor) -> torch.Tensor:
        d = (w - q).reshape(48, 4, 32)
        hb = torch.stack([h[i:i + 32, i:i + 32] for i in range(0, 128, 32)])
        return torch.einsum("ogi,gij,ogj->og", d, hb, d)

    awq, rtn = per_group(rtn_weight(clipped, sc, "w")), per_group(rtn_weight(w, sc, "w"))
    assert bool((awq <= rtn).all()) and float(awq.sum()) < float(rtn.sum())


def tiny_model(kind: str, vocab: int) -> torch.nn.Module:
    """The conftest tiny Llama (GQA), the same without GQA (v/o folds), or a tiny Gemma-3."""
    from tests.conftest import tiny_llama_config

    torch.manual_seed(0)
    if kind == "gemma":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        cfg = Gemma3TextConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                               head_dim=16, sliding_window=16, max_position_embeddings=256)
        model = Gemma3ForCausalLM(cfg).eval()
    else:
        from transformers import LlamaForCausalLM

        cfg = tiny_llama_config(vocab)
        cfg.num_key_value_heads = 2 if kind == "llama-gqa" else 4
        model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random norms, so that (1 + w) and w differ visibly
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("kind,groups", [("llama-gqa", 3), ("llama", 4), ("gemma", 4)])
def test_folding_keeps_the_models_function(kind: str, groups: int, tiny_tokenizer) -> None:
    # Scales spread over e^±2 change every folded weight by one float32 rounding (2^-24
    # relative); through 2 blocks and the head the logits moved by at most 8e-7 of their
    # largest magnitude (measured, Gemma; Llama 3e-7); 1e-5 allows for that and fails on any
    # wrong fold (which moves them by O(1)).
    model = tiny_model(kind, len(tiny_tokenizer))
    ids = torch.arange(5, 40).reshape(1, -1)
    with torch.no_grad():
        before = model(ids).logits
    folded = 0
    for block in model.model.layers:
        found = fold_groups(block)
        assert len(found) == groups
        for group in found:
            width = block.get_submodule(group.linears[0]).weight.shape[1]
            s = torch.exp(torch.randn(width, generator=torch.Generator().manual_seed(width)))
            fold_scales(block, group, s)
            folded += 1
    with torch.no_grad():
        after = model(ids).logits
    assert folded == 2 * groups
    assert float((after - before).abs().max()) <= 1e-5 * float(before.abs().max())


def test_runs_in_memory_checkpoints_and_beats_rtn(tiny_llama, tmp_path) -> None:
    import json

    model, tok = tiny_llama
    float_model = copy.deepcopy(model)
    rtn_model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    cal = Calibration(torch.randint(0, 250, (8, 32), generator=g), batch_size=4,
                      source="random ids")
    report = lowbit.quantize(model, "int3-asym-g32", method="awq", calibration=cal,
                             progress=False)
    lowbit.quantize(rtn_model, "int3-asym-g32", method="rtn", progress=False)
    # the norms before q/k/v and gate/up were divided by AWQ's scales
    assert not torch.equal(model.model.layers[0].input_layernorm.weight,
                           float_model.model.layers[0].input_layernorm.weight.half().float())
    lowbit.save(model, tmp_path / "ckpt", tokenizer=tok, layer_info=report.layers)
    layers = json.loads((tmp_path / "ckpt" / "lowbit.json").read_text())["layers"]
    assert {e["method"] for e in layers.values()} == {"awq"} and len(layers) == 14
    assert next(iter(layers.values()))["method_settings"]["grid"] == 20
    loaded, _ = lowbit.load(tmp_path / "ckpt")
    ids = torch.randint(0, 250, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, ref, rtn = model(ids).logits, float_model(ids).logits, rtn_model(ids).logits
        assert torch.equal(loaded(ids).logits, out)
    # on held-out ids from the same distribution: measured mean squared logit error AWQ/RTN
    # 0.74 on this random model (0.90 and 0.97 with init seeds 1 and 2: a random model has no
    # salient channels to find); 1.0 asks only that AWQ is not worse.
    assert float((out - ref).pow(2).mean()) < float((rtn - ref).pow(2).mean())


def test_quantize_through_the_cli(tiny_hf_dir, tmp_path, capsys) -> None:
    from lowbit.cli import main

    text = tmp_path / "calib.txt"
    text.write_text("The whale, the sea and the ship. " * 40, encoding="utf-8")
    code = main(["quantize", str(tiny_hf_dir), "--scheme", "int4-asym-g32", "-o",
                 str(tmp_path / "q"), "--method", "awq", "--method-option", "grid=5",
                 "--calibration-text", str(text), "--calibration-windows", "3",
                 "--calibration-length", "40"])
    assert code in (0, None), capsys.readouterr().err
    loaded, _ = lowbit.load(tmp_path / "q")
    assert loaded.model.layers[1].mlp.down_proj.method == "awq"


def test_a_block_step_needs_statistics_and_gets_its_options() -> None:
    seen = {}

    def step(block, stats, schemes, *, name, k: int = 0):
        seen.update(name=name, k=k)
        return False

    def fn(w, scheme, stats, *, name, k: int = 1, other: bool = False):
        return quantize_rtn(w, scheme, name=name)

    with pytest.raises(ValueError, match="needs statistics"):
        register_method("stepper", fn, prepare_block=step)
    method = register_method("stepper", fn, needs={"hessian"}, prepare_block=step)
    try:
        assert method.with_options(k=7).prepare(None, {}, {}, name="b.0") is False
        assert seen == {"name": "b.0", "k": 7}
        assert get_method("rtn").prepare(None, {}, {}, name="b") is False
    finally:
        lowbit.methods.unregister_method("stepper")

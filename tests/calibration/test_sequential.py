"""Block-by-block calibration on the tiny Llama: each block's statistics come from the inputs
the already-quantized blocks before it produce; only one block's activations are alive."""

from __future__ import annotations

import copy
import weakref

import pytest
import torch
from torch import nn

import lowbit
from lowbit.calibration import calibrate_sequential
from lowbit.calibration.blocks import find_blocks
from tests.calibration.helpers import (
    Recorder,
    assert_stats_match,
    capture_linear_inputs,
    hand_stats,
    registered,
)

SCHEME = "int4-sym-g32"
BLOCK1 = ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.o_proj",
          "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"]


def _updates(calibration) -> int:
    return len(calibration.batches())


def test_stats_come_from_quantized_earlier_blocks(tiny_llama, tiny_calibration) -> None:
    model, _ = tiny_llama
    float_model = copy.deepcopy(model)
    # reference: block 0 quantized by RTN (the recorder's codes are RTN's), block 1 float
    half = copy.deepcopy(model)
    # float32 kept tensors on both sides: the reference's float block 1 must not be rounded
    lowbit.quantize(half, SCHEME, exclude=[r"layers\.1\.", "lm_head"], progress=False,
                    keep_dtype=torch.float32)
    batches = tiny_calibration.batches()
    expected = capture_linear_inputs(half, BLOCK1, batches)
    floats = capture_linear_inputs(float_model, BLOCK1, batches)
    rec = Recorder()
    with registered("recorder", rec):
        report = lowbit.quantize(model, SCHEME, method="recorder", calibration=tiny_calibration,
                                 progress=False, keep_dtype=torch.float32)
    assert set(rec.stats) == set(report.layers) and len(report.layers) == 14
    assert {r.method for r in report.layers.values()} == {"recorder"}
    for name in BLOCK1:
        ref = hand_stats(expected[name])
        assert_stats_match(rec.stats[name], ref, _updates(tiny_calibration))
        # ... and they are not what the float model's block 1 sees (the test can tell)
        gap = (hand_stats(floats[name])["x2_mean"] - ref["x2_mean"]).abs().max()
        assert gap > 1e3 * 2 * int(ref["n"]) * 2.0**-53 * ref["x2_mean"].max()
    # block 0 sees the embeddings, whatever was quantized
    first = "model.layers.0.self_attn.k_proj"
    ref0 = hand_stats(capture_linear_inputs(float_model, [first], batches)[first])
    assert_stats_match(rec.stats[first], ref0, _updates(tiny_calibration))
    # blocks in order
    assert [n.split(".")[2] for n in rec.order] == ["0"] * 7 + ["1"] * 7


def test_result_equals_rtn_and_model_is_restored(tiny_llama, tiny_calibration) -> None:
    model, _ = tiny_llama
    rtn_model = copy.deepcopy(model)
    lowbit.quantize(rtn_model, SCHEME, progress=False)
    with registered("recorder", Recorder()):
        lowbit.quantize(model, SCHEME, method="recorder", calibration=tiny_calibration,
                        progress=False)
    stack = find_blocks(model)
    assert [type(b).__name__ for b in stack.blocks] == ["LlamaDecoderLayer"] * 2
    ids = torch.arange(3, 40).reshape(1, -1)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, rtn_model(ids).logits)
    assert not any(m._forward_hooks for m in model.modules())


def test_output_head_gets_final_hidden_states(tiny_llama, tiny_calibration) -> None:
    model, _ = tiny_llama
    ref_model = copy.deepcopy(model)
    # every block quantized, head float; kept tensors rounded to fp16 on both sides (the
    # calibration runs through the kept tensors as they will be stored)
    lowbit.quantize(ref_model, SCHEME, progress=False)
    ref = hand_stats(capture_linear_inputs(ref_model, ["lm_head"],
                                           tiny_calibration.batches())["lm_head"])
    rec = Recorder()
    with registered("recorder", rec):
        lowbit.quantize(model, SCHEME, method="recorder", calibration=tiny_calibration,
                        exclude=[], progress=False)
    assert rec.order[-1] == "lm_head"
    assert_stats_match(rec.stats["lm_head"], ref, _updates(tiny_calibration))


def test_one_block_of_activations_and_stats_alive(tiny_llama, tiny_calibration) -> None:
    """Structural memory check: when block i runs, the hidden states that entered block i-1
    have been freed, no Linear outside block i is hooked, and the previous block's statistics
    are gone."""
    model, _ = tiny_llama
    stack = find_blocks(model)
    entered: list[list[weakref.ref]] = [[] for _ in stack.blocks]
    stats_refs: dict[str, weakref.ref] = {}
    problems: list[str] = []

    def pre_hook(index: int):
        def hook(block: nn.Module, args: tuple) -> None:
            if index > 0 and any(r() is not None for r in entered[index - 1]):
                problems.append(f"block {index - 1}'s inputs alive while block {index} runs")
            hooked = {n for n, m in model.named_modules() if m._forward_hooks}
            if not all(n.startswith(stack.names[index] + ".") for n in hooked):
                problems.append(f"hooks outside block {index}: {sorted(hooked)}")
            entered[index].append(weakref.ref(args[0]))
        return hook

    def method(w, scheme, stats, *, name):
        block = int(name.split(".")[2])
        stale = [n for n, r in stats_refs.items() if int(n.split(".")[2]) < block and r()]
        if stale:
            problems.append(f"statistics of {stale} alive at {name}")
        stats_refs[name] = weakref.ref(stats)
        return lowbit.quantize_tensor(w, scheme, name=name)

    handles = [b.register_forward_pre_hook(pre_hook(i)) for i, b in enumerate(stack.blocks)]
    with registered("watcher", method, needs={"hessian"}):
        lowbit.quantize(model, SCHEME, method="watcher", calibration=tiny_calibration,
                        progress=False)
    for h in handles:
        h.remove()
    assert not problems, problems
    # each block ran twice per batch (statistics, then outputs)
    assert [len(e) for e in entered] == [2 * len(tiny_calibration.batches())] * 2


def test_layers_outside_blocks_are_refused(tiny_llama, tiny_calibration) -> None:
    model, _ = tiny_llama
    with pytest.raises(ValueError, match="outside the decoder blocks"):
        calibrate_sequential(model, ["model.rotary_emb"], tiny_calibration,
                             needs={"x2_mean"}, on_block=lambda stats: None)
    with pytest.raises(ValueError, match="cannot find the decoder blocks"):
        calibrate_sequential(nn.Sequential(nn.Linear(4, 4)), ["0"], tiny_calibration,
                             needs={"x2_mean"}, on_block=lambda stats: None)
    with pytest.raises(TypeError, match="Calibration"):
        calibrate_sequential(model, [], torch.zeros(2, 3, dtype=torch.long),
                             needs={"x2_mean"}, on_block=lambda stats: None)


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["smollm2", "gemma"])
def test_real_model_block_inputs_come_from_quantized_blocks(request, fixture, tmp_path) -> None:
    """SmolLM2 (Llama) and Gemma-3 (sliding and global attention layers get different masks
    and rotary tables): block 2's statistics equal those of a full forward pass through a
    model whose blocks 0-1 are RTN-quantized."""
    from lowbit.calibration import Calibration
    from lowbit.data import DEFAULT_CALIBRATION_TEXT

    base, tok = request.getfixturevalue(fixture)
    cal = Calibration.from_text(tok, DEFAULT_CALIBRATION_TEXT, windows=2, length=64,
                                batch_size=1)
    names = find_blocks(base).names
    probe = [f"{names[2]}.self_attn.o_proj", f"{names[2]}.mlp.down_proj"]
    later = [rf"{n}\." for n in names[2:]] + ["lm_head"]
    half = copy.deepcopy(base)
    lowbit.quantize(half, "int4-sym-g32", exclude=later, progress=False,
                    keep_dtype=torch.float32)
    expected = capture_linear_inputs(half, probe, cal.batches())
    del half
    model = copy.deepcopy(base)
    rec = Recorder()
    with registered("recorder", rec):
        lowbit.quantize(model, "int4-sym-g32", method="recorder", calibration=cal,
                        exclude=[rf"{n}\." for n in names[3:]] + ["lm_head"], progress=False,
                        keep_dtype=torch.float32)
    for name in probe:
        assert_stats_match(rec.stats[name], hand_stats(expected[name]), len(cal.batches()))

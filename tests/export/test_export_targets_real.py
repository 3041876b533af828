"""SmolLM2-135M exported to compressed-tensors and bitsandbytes and run by transformers with
those libraries on the CPU: the same weights bit for bit and the same logits as lowbit. Kept
short: the first two decoder blocks quantized, one window of 64 tokens."""

from __future__ import annotations

import copy

import pytest
import torch

import lowbit

pytestmark = pytest.mark.slow
pytest.importorskip("compressed_tensors")
pytest.importorskip("bitsandbytes")

FIRST_BLOCKS = [r"layers\.([2-9]|[1-9]\d)\.", "lm_head"]  # quantize blocks 0 and 1 only


def _ckpt(smollm2, scheme, path):
    model, tok = smollm2
    model = copy.deepcopy(model)
    lowbit.quantize(model, scheme, exclude=FIRST_BLOCKS, progress=False)
    return lowbit.save(model, path, tokenizer=tok)


def _ids(tok):
    from lowbit.data import read_text

    return tok(read_text("sotu-2000-2015.txt")[:2000], return_tensors="pt").input_ids[:, :64]


def _lowbit_logits(ckpt, ids, dtype=torch.float32):
    from lowbit.kernels.choice import using

    model, _ = lowbit.load(ckpt, dtype=dtype)
    with torch.no_grad(), using(model, "reference", cache_weight=True):
        return model, model(ids).logits


def test_smollm2_compressed_tensors_in_transformers(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from lowbit.export.compressed_tensors import to_compressed_tensors

    ckpt = _ckpt(smollm2, "int4-asym-g64-zpint", tmp_path / "ckpt")
    report = to_compressed_tensors(ckpt, tmp_path / "ct")
    assert report.formats == {"pack-quantized": 14} and not report.requantized
    ids = _ids(smollm2[1])
    ours, want = _lowbit_logits(ckpt, ids)
    theirs = AutoModelForCausalLM.from_pretrained(
        tmp_path / "ct", dtype=torch.float32,
        quantization_config=CompressedTensorsConfig(dequantize=True))
    for name in report.lossless:
        assert torch.equal(theirs.get_submodule(name).weight,
                           ours.get_submodule(name).qweight.dequantize()), name
    with torch.no_grad():
        assert torch.equal(theirs(ids).logits, want)
        # compressed-tensors' own decompressors, every tensor of the folder read
        assert torch.equal(lowbit.load_model(tmp_path / "ct")[0](ids).logits, want)


def test_smollm2_fp4_compressed_tensors_in_transformers(smollm2, tmp_path):
    """Block 0: attention in mxfp4, MLP in nvfp4. compressed-tensors 0.20.1 dequantizes FP4 to
    bfloat16: MXFP4 weights are exact there, NVFP4 weights come back rounded to bfloat16, so
    the logits are compared with both sides in bfloat16 (transformers' default route)."""
    from transformers import AutoModelForCausalLM

    from lowbit.export.compressed_tensors import to_compressed_tensors

    model, tok = smollm2
    model = copy.deepcopy(model)
    lowbit.quantize(model, "mxfp4", exclude=[r"layers\.([1-9]|[1-9]\d)\.", "lm_head"],
                    overrides={r"layers\.0\.mlp\.": "nvfp4"}, progress=False)
    ckpt = lowbit.save(model, tmp_path / "ckpt", tokenizer=tok)
    report = to_compressed_tensors(ckpt, tmp_path / "ct")
    assert report.formats == {"mxfp4-pack-quantized": 4, "nvfp4-pack-quantized": 3}
    assert not report.requantized
    ids = _ids(tok)[:, :16]  # bfloat16 matmuls are slow on CPUs without bf16 instructions
    ours, want = _lowbit_logits(ckpt, ids, torch.bfloat16)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "ct", dtype=torch.bfloat16)
    with torch.no_grad():  # the default route decompresses each layer on its first forward
        assert torch.equal(theirs(ids).logits, want)
        assert torch.equal(lowbit.load_model(tmp_path / "ct", dtype=torch.bfloat16)[0](ids).logits,
                           want)
    for name in report.lossless:
        got, w = theirs.get_submodule(name).weight, ours.get_submodule(name).qweight.dequantize()
        assert torch.equal(got.float(), w) if "attn" in name else torch.equal(got, w.bfloat16())


def test_smollm2_bitsandbytes_in_transformers(smollm2, tmp_path):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    from lowbit.export.bnb import to_bnb_folder

    ckpt = _ckpt(smollm2, "nf4-g64-dq", tmp_path / "ckpt")
    report = to_bnb_folder(ckpt, tmp_path / "bnb")
    assert report.formats == {"nf4-dq": 14}
    ids = _ids(smollm2[1])
    ours, want = _lowbit_logits(ckpt, ids)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "bnb", dtype=torch.float32)
    for name in report.lossless:
        m = theirs.get_submodule(name)
        assert isinstance(m, bnb.nn.Linear4bit)
        w = bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state)
        assert torch.equal(w, ours.get_submodule(name).qweight.dequantize()), name
        m.support_avx512bf16_for_cpu = False  # bitsandbytes' float32 path (see test_export_bnb)
    for p in theirs.parameters():
        if p.is_floating_point():
            p.data = p.data.float()
    with torch.no_grad():
        assert torch.equal(theirs(ids).logits, want)

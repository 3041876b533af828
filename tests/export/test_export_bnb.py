"""bitsandbytes export: each layer dequantized by bitsandbytes gives lowbit's weights bit for
bit; bitsandbytes' own quantizer writes the same bytes where the schemes agree; a tiny Llama
exported and loaded by transformers (Linear4bit on the CPU) gives lowbit's weights and, on
bitsandbytes' float32 path, its logits."""

from __future__ import annotations

import pytest
import torch

import lowbit

bnb = pytest.importorskip("bitsandbytes")

LOSSLESS = ["nf4-g64", "nf4-g64-dq", "bnb-fp4-g64", "bnb-fp4-g128-dq", "nf4-g256",
            "nf4-g64-e4m3scale-ts", "nf4-g64-fp32scale"]


def _state(tensors):
    from bitsandbytes.functional import QuantState

    rest = {k.removeprefix("weight."): v for k, v in tensors.items() if k != "weight"}
    return QuantState.from_dict(rest, device=torch.device("cpu"))


@pytest.mark.parametrize("name", LOSSLESS)
def test_bitsandbytes_dequantizes_bit_exact(name):
    from lowbit.export.bnb_layout import to_bnb

    torch.manual_seed(0)
    qt = lowbit.quantize_tensor(torch.randn(96, 256), name)
    t = to_bnb(qt)
    assert torch.equal(bnb.functional.dequantize_4bit(t["weight"], _state(t)), qt.dequantize())


def test_same_bytes_as_bitsandbytes_where_the_schemes_agree():
    """NF4 with an fp32 absmax is bitsandbytes' own quantization byte for byte. lowbit's
    default fp16 scale moves a few codes; bitsandbytes' FP4 codes small positive weights as
    -0 (code 8) where lowbit writes +0 (code 0): the same value, another byte."""
    from lowbit.core.packing import unpack
    from lowbit.export.bnb_layout import to_bnb

    torch.manual_seed(3)
    w = torch.randn(256, 512) * 0.02
    for name, kind in (("nf4-g64-fp32scale", "nf4"), ("bnb-fp4-g64-fp32scale", "fp4")):
        qt = lowbit.quantize_tensor(w, name)
        t = to_bnb(qt)
        packed, state = bnb.functional.quantize_4bit(w, blocksize=64, quant_type=kind,
                                                     compress_statistics=False)
        assert torch.equal(t["weight.absmax"], state.absmax)
        if kind == "nf4":
            assert torch.equal(t["weight"], packed)
            continue
        b = packed.view(-1)
        theirs = torch.stack([b >> 4, b & 15], 1).view(-1)
        ours = unpack(qt.codes, 4, qt.numel)
        differ = theirs != ours
        assert bool(differ.any())
        assert set(zip(ours[differ].tolist(), theirs[differ].tolist())) == {(0, 8)}


def test_tiny_llama_loads_in_transformers_with_lowbits_weights(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    from lowbit.export.bnb import to_bnb_folder
    from lowbit.kernels.choice import using

    model, tok = tiny_llama
    lowbit.quantize(model, "nf4-g64-dq", exclude=["lm_head"], progress=False)
    ckpt = lowbit.save(model, tmp_path / "ckpt", tokenizer=tok)
    report = to_bnb_folder(ckpt, tmp_path / "bnb")
    assert report.formats == {"nf4-dq": 14}
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "bnb", dtype=torch.float32)
    ours, _ = lowbit.load(ckpt)
    layers = [n for n, m in theirs.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14
    for name in layers:
        m = theirs.get_submodule(name)
        w = bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state)
        assert torch.equal(w, ours.get_submodule(name).qweight.dequantize()), name
        # bitsandbytes' CPU kernel (AVX512-BF16 machines) runs in bfloat16; its float32
        # dequantize-and-matmul path is the one that matches lowbit bit for bit
        m.support_avx512bf16_for_cpu = False
    for p in theirs.parameters():  # transformers keeps the file's float16 norms and
        if p.is_floating_point():  # embeddings despite dtype=float32: the same values
            p.data = p.data.float()
    ids = torch.arange(3, 40).view(1, -1)
    with torch.no_grad(), using(ours, "reference", cache_weight=True):
        assert torch.equal(theirs(ids).logits, ours(ids).logits)


def test_other_schemes_are_refused_by_name_or_requantized(tiny_llama, tmp_path):
    from lowbit.export.bnb import to_bnb_folder

    model, tok = tiny_llama
    lowbit.quantize(model, "int4-sym-g32", exclude=["lm_head"], progress=False)
    ckpt = lowbit.save(model, tmp_path / "ckpt", tokenizer=tok)
    with pytest.raises(ValueError, match=r"q_proj \(int4-sym-g32\).*nf4"):
        to_bnb_folder(ckpt, tmp_path / "bnb")
    report = to_bnb_folder(ckpt, tmp_path / "bnb", requantize=True)
    assert set(report.requantized.values()) == {"nf4-g64"}

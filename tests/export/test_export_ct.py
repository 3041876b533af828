"""compressed-tensors export: each layer decompressed by the library's own compressors gives
lowbit's weights bit for bit; a tiny Llama exported and loaded by transformers gives lowbit's
logits; refusals name the layer and scheme; lowbit.load_model reads the folder back."""

from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit.core.qparams import choose_qparams, quantize_with_qparams
from lowbit.core.qtensor import QTensor

pytest.importorskip("compressed_tensors")

LOSSLESS = ["int4-sym-g32", "int4-asym-g64-zpint", "int8-sym-channel", "int8-asym-channel-zpint",
            "int4-sym-tensor", "int3-sym-g32", "int4-sym-g32-dq", "int4-sym-g16-e4m3scale-ts",
            "fp8-e4m3-channel", "fp8-e4m3-g32", "fp8-e4m3-tensor"]


def _decompress(layer):
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**layer.weights_args),
                                format=layer.format)
    compressor = BaseCompressor.get_value_from_registry(layer.format)
    return compressor.decompress(dict(layer.tensors), scheme)["weight"]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("cols", [64, 100])
def test_pack_rows_is_the_library_packing(bits, cols):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    from lowbit.export.ct_layout import pack_rows

    g = torch.Generator().manual_seed(bits * cols)
    values = torch.randint(0, 2**bits, (5, cols), generator=g, dtype=torch.uint8)
    signed = (values.to(torch.int16) - 2 ** (bits - 1)).to(torch.int8)
    assert torch.equal(pack_rows(values, bits), pack_to_int32(signed, bits))


@pytest.mark.parametrize("name", LOSSLESS)
def test_library_decompresses_bit_exact(name):
    from lowbit.export.ct_layout import to_ct

    torch.manual_seed(0)
    qt = lowbit.quantize_tensor(torch.randn(48, 256), name)
    assert torch.equal(_decompress(to_ct(qt)).float(), qt.dequantize())


def test_act_order_channel_goes_out_in_column_order():
    from lowbit.export.ct_layout import to_ct

    torch.manual_seed(1)
    w = torch.randn(32, 128)
    perm = torch.randperm(128).to(torch.int32)
    qp = choose_qparams(w[:, perm.long()], "int4-asym-channel-zpint")
    qt = QTensor.from_codes(quantize_with_qparams(w[:, perm.long()], qp), qp, perm=perm)
    layer = to_ct(qt)
    assert layer.weights_args["actorder"] == "weight"
    assert torch.equal(_decompress(layer), qt.dequantize())


def test_what_the_format_cannot_hold_is_refused_with_the_reason():
    from lowbit.export.ct_layout import to_ct

    torch.manual_seed(2)
    w = torch.randn(16, 96)
    with pytest.raises(ValueError, match="float zero point"):
        to_ct(lowbit.quantize_tensor(w, "int4-asym-g32"))
    with pytest.raises(ValueError, match="not whole groups of 64"):
        to_ct(lowbit.quantize_tensor(w, "int4-sym-g64"))
    perm = torch.randperm(96).to(torch.int32)
    qp = choose_qparams(w[:, perm.long()], "int4-sym-g32")
    qt = QTensor.from_codes(quantize_with_qparams(w[:, perm.long()], qp), qp, perm=perm)
    with pytest.raises(ValueError, match="g_idx"):
        to_ct(qt)


def _checkpoint(tiny_llama, tmp_path, scheme, **kwargs):
    model, tok = tiny_llama
    lowbit.quantize(model, scheme, progress=False, **kwargs)
    return lowbit.save(model, tmp_path / "ckpt", tokenizer=tok)


def _lowbit_logits(ckpt, ids):
    from lowbit.kernels.choice import using

    model, _ = lowbit.load(ckpt)
    with torch.no_grad(), using(model, "reference", cache_weight=True):
        return model(ids).logits


MIXES = {  # overrides of int4-sym-g32 -> compressed-tensors layers by format
    "asym": ({r"layers\.0\.mlp": "int8-asym-channel-zpint",
              r"layers\.1\.self_attn": "fp8-e4m3-channel"},
             {"pack-quantized": 10, "float-quantized": 4}),
    "sym": ({r"layers\.1\.self_attn": "fp8-e4m3-tensor"},
            {"pack-quantized": 10, "float-quantized": 4}),
}


@pytest.mark.parametrize("mix", list(MIXES))
def test_tiny_llama_loads_in_transformers_with_lowbits_logits(tiny_llama, tmp_path, mix):
    from transformers import AutoModelForCausalLM

    from lowbit.export.compressed_tensors import to_compressed_tensors

    overrides, formats = MIXES[mix]
    ckpt = _checkpoint(tiny_llama, tmp_path, "int4-sym-g32", exclude=["lm_head"],
                       overrides=overrides)
    report = to_compressed_tensors(ckpt, tmp_path / "ct")
    assert report.formats == formats and not report.requantized
    ids = torch.arange(3, 40).view(1, -1)
    want = _lowbit_logits(ckpt, ids)
    # transformers 5.24 loads a mix only by its default route (layers decompressed on the first
    # forward), and that route fails on asymmetric layers (see the last test); its
    # dequantize=True route decompresses every layer with the first group's scheme
    routes = [{}] if mix == "sym" else []
    for extra in routes:
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "ct", dtype=torch.float32, **extra)
        with torch.no_grad():
            assert torch.equal(model(ids).logits, want)
    # import: compressed-tensors' own decompressors, group by group, every tensor read
    loaded, _ = lowbit.load_model(tmp_path / "ct")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, want)


def test_float_zero_point_is_refused_by_name_or_requantized(tiny_llama, tmp_path):
    from lowbit.export.compressed_tensors import to_compressed_tensors

    ckpt = _checkpoint(tiny_llama, tmp_path, "int4-asym-g32", exclude=["lm_head"])
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj "
                                         r"\(int4-asym-g32\).*--requantize"):
        to_compressed_tensors(ckpt, tmp_path / "ct")
    assert not (tmp_path / "ct").exists()
    report = to_compressed_tensors(ckpt, tmp_path / "ct", requantize=True)
    assert set(report.requantized.values()) == {"int4-asym-g32-zpint"}
    assert not report.lossless
    # a single asymmetric scheme: transformers' dequantize=True route reads it
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "ct", dtype=torch.float32,
        quantization_config=CompressedTensorsConfig(dequantize=True))
    loaded, _ = lowbit.load_model(tmp_path / "ct")
    ids = torch.arange(3, 40).view(1, -1)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_transformers_default_route_fails_on_the_librarys_own_asymmetric_layers(tmp_path):
    """Why lowbit loads compressed-tensors folders with dequantize=True: with transformers
    5.24 and compressed-tensors 0.20.1, the default route builds the compressed modules on the
    meta device, where PackedQuantizationCompressor.compress leaves weight_zero_point unpacked
    (out, groups), while the real compress packs it to (out*bits/32, groups). A folder the
    library itself compresses then fails to load. (If this starts passing, update the README.)"""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg)
    weights = {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group",
               "group_size": 32}
    apply_quantization_config(model, QuantizationConfig(
        config_groups={"g": {"targets": ["Linear"], "weights": weights}}, ignore=["lm_head"],
        format="pack-quantized"))
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    model.save_pretrained(tmp_path / "own")
    compressor.update_config(tmp_path / "own")
    with pytest.raises(RuntimeError, match="mismatched_sizes"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "own", dtype=torch.float32)


@pytest.mark.parametrize("name", ["nvfp4", "mxfp4"])
def test_fp4_goes_out_as_stored_in_the_librarys_own_fp4_formats(name):
    """The packed bytes and scale bytes are lowbit's; the library's unpacking reads lowbit's
    E2M1 values and scales; its decompressor gives lowbit's weights (MXFP4 exactly, NVFP4
    rounded to bfloat16, the dtype compressed-tensors 0.20.1 dequantizes FP4 to)."""
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8

    from lowbit.core.packing import unpack
    from lowbit.export.ct_layout import to_ct

    torch.manual_seed(3)
    qt = lowbit.quantize_tensor(torch.randn(48, 256) * 0.05, name)
    layer = to_ct(qt)
    assert layer.format == f"{name}-pack-quantized"
    assert set(layer.tensors) == ({"weight_packed", "weight_scale"}
                                  | ({"weight_global_scale"} if name == "nvfp4" else set()))
    codes = unpack(qt.codes, 4, qt.numel).view(qt.shape)
    values = unpack_fp4_from_uint8(layer.tensors["weight_packed"], 48, 256, dtype=torch.float32)
    assert torch.equal(values, qt.scheme.element_format.decode(codes))
    assert torch.equal(layer.tensors["weight_scale"].view(torch.uint8), qt.scale)
    weight, want = _decompress(layer), qt.dequantize()
    assert weight.dtype == torch.bfloat16
    if name == "mxfp4":
        assert torch.equal(weight.float(), want)
    else:
        assert torch.equal(weight, want.to(torch.bfloat16))
        assert not torch.equal(weight.float(), want)  # why the status note says bfloat16


def test_other_fp4_schemes_requantize_to_nvfp4_or_a_channel_fp8():
    from lowbit.core.scheme import Scheme
    from lowbit.export.ct_layout import requantize_for, support

    assert support(Scheme.parse("fp4-e2m1-g32"))[0] == "requantize"
    assert "nvfp4 (fp4-e2m1-g16-e4m3scale-ts)" in support(Scheme.parse("fp4-e2m1-g32"))[1]
    assert str(requantize_for(Scheme.parse("fp4-e2m1-g32"), 256)) == "nvfp4"
    assert str(requantize_for(Scheme.parse("mxfp4"), 200)) == "fp8-e4m3-channel"
    assert support(Scheme.parse("nvfp4"))[0] == "lossless"


def test_tiny_llama_fp4_other_than_nv_mx_is_refused_or_requantized_to_nvfp4(tiny_llama, tmp_path):
    from lowbit.export.compressed_tensors import to_compressed_tensors

    ckpt = _checkpoint(tiny_llama, tmp_path, "fp4-e2m1-g32", exclude=["lm_head"])
    with pytest.raises(ValueError, match=r"\(fp4-e2m1-g32\).*nvfp4"):
        to_compressed_tensors(ckpt, tmp_path / "ct")
    report = to_compressed_tensors(ckpt, tmp_path / "ct", requantize=True)
    assert report.formats == {"nvfp4-pack-quantized": 14}
    assert set(report.requantized.values()) == {"nvfp4"}
    loaded, _ = lowbit.load_model(tmp_path / "ct", dtype=torch.bfloat16)
    ours, _ = lowbit.load(ckpt)
    name = "model.layers.1.mlp.down_proj"
    nv = lowbit.quantize_tensor(ours.get_submodule(name).qweight.dequantize(), "nvfp4")
    assert torch.equal(loaded.get_submodule(name).weight, nv.dequantize().bfloat16())

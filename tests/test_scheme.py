"""Scheme names: parsing, canonical names, aliases, JSON, and errors that name the bad part."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lowbit.core.scheme import (
    ALIASES,
    ELEMENT_FORMATS,
    MAX_BLOCK,
    MIN_BLOCK,
    SCALE_FORMATS,
    SCHEME_JSON_VERSION,
    Outliers,
    Scheme,
)
from lowbit.formats import get_format

# the names the issue asks for; each must parse and print back unchanged
NAMES = [
    "int8-sym-channel", "int8-sym-g32", "int4-asym-g128", "int4-sym-g32", "int2-asym-g64",
    "nf4-g64", "nf4-g64-dq", "fp8-e4m3-channel", "fp8-e5m2-tensor", "fp4-e2m1-g32",
    "mxfp8", "mxfp6", "mxfp4", "nvfp4",
]


@pytest.mark.parametrize("name", NAMES)
def test_names_round_trip(name):
    scheme = Scheme.parse(name)
    assert str(scheme) == name
    assert Scheme.parse(scheme.canonical()) == scheme
    assert Scheme.parse(name.upper()) == scheme  # names are case-insensitive
    assert Scheme.parse(scheme) is scheme


def test_fields_of_some_names():
    s = Scheme.parse("int4-asym-g128")
    assert (s.format, s.granularity, s.block_size, s.symmetric, s.scale_format) == \
        ("int4", "block", 128, False, "fp16")
    assert s.element_format is get_format("uint4")  # asymmetric codes are unsigned
    assert s.scale_fmt is get_format("fp16") and s.bits == 4 and s.is_int
    assert s.group_size(4096) == 128
    c = Scheme.parse("int8-sym-channel")
    assert c.element_format is get_format("int8") and c.scale_format == "fp32"
    assert c.group_size(4096) == 4096
    nf = Scheme.parse("nf4-g64-dq")
    assert nf.double_quant and nf.element_format is get_format("nf4") and not nf.is_int


@pytest.mark.parametrize("alias", list(ALIASES))
def test_aliases(alias):
    s = Scheme.parse(alias)
    assert s == Scheme.parse(ALIASES[alias])
    assert str(Scheme.parse(ALIASES[alias])) == alias  # the long form prints as the alias
    assert s.granularity == "block"
    if alias == "nvfp4":
        assert (s.block_size, s.scale_fmt, s.tensor_scale) == (16, get_format("fp8-e4m3"), True)
    else:
        assert (s.block_size, s.scale_fmt) == (32, get_format("e8m0"))


def test_defaults():
    s = Scheme.parse("int4")
    assert (s.granularity, s.symmetric, s.scale_format, s.block_size) == \
        ("tensor", True, "fp32", None)
    assert str(s) == "int4-sym-tensor"
    assert Scheme.parse("fp8-e4m3-g32").scale_format == "fp16"


# --- generated schemes (hypothesis) ----------------------------------------------------------
@st.composite
def schemes(draw):
    fmt = draw(st.sampled_from(ELEMENT_FORMATS))
    gran = draw(st.sampled_from(["tensor", "channel", "block"]))
    fields = {
        "format": fmt,
        "granularity": gran,
        "block_size": draw(st.integers(MIN_BLOCK, MAX_BLOCK)) if gran == "block" else None,
        "symmetric": draw(st.booleans()) if fmt.startswith("int") else True,
        "scale_format": draw(st.sampled_from([None, *SCALE_FORMATS])),
        "double_quant": draw(st.booleans()),
        "tensor_scale": draw(st.booleans()),
        "zero_point": draw(st.sampled_from(["float", "int"])),
        "outliers": draw(st.one_of(
            st.none(),
            st.integers(1, 10**9).map(lambda k: Outliers(count=k)),
            st.floats(0, 1, exclude_min=True, exclude_max=True).map(
                lambda f: Outliers(fraction=f)),
        )),
    }
    try:
        return Scheme(**fields)
    except ValueError:
        assume(False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(schemes())
def test_generated_schemes_round_trip(scheme):
    assert Scheme.parse(str(scheme)) == scheme
    assert Scheme.parse(scheme.canonical()) == scheme
    assert str(Scheme.parse(str(scheme))) == str(scheme)
    assert Scheme.from_json(scheme.to_json()) == scheme
    assert Scheme.from_json(json.loads(scheme.dumps())) == scheme


# --- JSON --------------------------------------------------------------------------------------
def test_json_content():
    s = Scheme.parse("int4-asym-g128-out1%")
    d = json.loads(s.dumps())
    assert d["version"] == SCHEME_JSON_VERSION
    assert d["name"] == str(s) == "int4-asym-g128-out1%"
    assert d["outliers"] == {"count": None, "fraction": 0.01}
    assert d["block_size"] == 128 and d["symmetric"] is False


@pytest.mark.parametrize("version", [None, 0, 4, "1", True])
def test_json_version_rejected(version):
    d = Scheme.parse("nf4-g64").to_json()
    if version is None:
        del d["version"]
    else:
        d["version"] = version
    with pytest.raises(ValueError, match=f"version {version!r} is not supported.*versions 1 to 3"):
        Scheme.from_json(d)


# Version 1 as lowbit 3f96b7c wrote it (copied from tests/fixtures/checkpoint_v1/lowbit.json):
# no zero_point field, so every zero point is a float.
V1_INT4_ASYM_G32 = {
    "block_size": 32, "double_quant": False, "format": "int4", "granularity": "block",
    "name": "int4-asym-g32", "outliers": None, "scale_format": "fp16", "symmetric": False,
    "tensor_scale": False, "version": 1,
}


def test_json_version_1_still_reads():
    s = Scheme.from_json(V1_INT4_ASYM_G32)
    assert s == Scheme.parse("int4-asym-g32") and s.zero_point == "float"
    with pytest.raises(ValueError, match="version 1 has no zero_point"):
        Scheme.from_json({**V1_INT4_ASYM_G32, "zero_point": "int"})


def test_json_version_2_holds_the_zero_point():
    d = Scheme.parse("int4-asym-g128-zpint").to_json()
    assert d["version"] == 2 and d["zero_point"] == "int" and d["name"] == "int4-asym-g128-zpint"
    assert Scheme.parse("int4-asym-g128").to_json()["zero_point"] == "float"


# --- zero-point domain -------------------------------------------------------------------------
def test_zpint_names():
    s = Scheme.parse("int4-asym-g128-zpint")
    assert s.zero_point == "int" and not s.symmetric and str(s) == "int4-asym-g128-zpint"
    assert Scheme.parse("int4-zpint-asym-g128") == s  # parts in any order, printed canonically
    assert Scheme.parse("int4-asym-g128").zero_point == "float"  # old names mean what they meant
    assert s != Scheme.parse("int4-asym-g128")
    assert str(Scheme.parse("int8-asym-channel-bf16scale-zpint-out5")) == \
        "int8-asym-channel-bf16scale-zpint-out5"


# --- outliers ----------------------------------------------------------------------------------
def test_outliers():
    s = Scheme.parse("int4-g32-out100")
    assert s.outliers == Outliers(count=100) and s.outliers.number(50) == 50
    p = Scheme.parse("int4-g32-out0.5%").outliers
    assert p.fraction == 0.005 and p.number(1000) == 5 and p.number(10) == 1
    with pytest.raises(ValueError, match="exactly one of count or fraction"):
        Outliers()
    with pytest.raises(ValueError, match="exactly one of count or fraction"):
        Outliers(count=1, fraction=0.1)


# --- bad names: the error names the wrong part and lists the valid choices ---------------------
PART_CHOICES = ["sym", "asym", "tensor", "channel", "gN", "zpint", "dq", "ts", "outK", "outP%",
                *(f"{s}scale" for s in SCALE_FORMATS)]


@pytest.mark.parametrize("name", ["int9-g32", "fp8", "q7_0", "float16-g32", "fp8-e4m3x"])
def test_unknown_format(name):
    with pytest.raises(ValueError) as err:
        Scheme.parse(name)
    msg = str(err.value)
    assert repr(name) in msg and "unknown format" in msg
    for choice in [*ELEMENT_FORMATS, *ALIASES]:
        assert choice in msg


@pytest.mark.parametrize(("name", "part"), [
    ("int4-g32-foo", "foo"), ("int4-g32-fp8scale", "fp8scale"), ("nf4-g64-dq2", "dq2"),
    ("int4-gx", "gx"), ("int4-out-1", "out"), ("int4--g32", ""),
])
def test_unknown_part(name, part):
    with pytest.raises(ValueError) as err:
        Scheme.parse(name)
    msg = str(err.value)
    assert repr(name) in msg and f"unknown part {part!r}" in msg
    for choice in PART_CHOICES:
        assert choice in msg


@pytest.mark.parametrize(("name", "expected"), [
    ("int4-g8", "block size must be between 16 and 256, got 8"),
    ("int4-g512", "block size must be between 16 and 256, got 512"),
    ("nf4-asym-g64", "asymmetric (zero point) needs an integer format, not nf4"),
    ("int4-asym-g32-e8m0scale", "asymmetric needs a float scale format (fp32, fp16, bf16)"),
    ("fp4-e2m1-g32-e8m0scale-dq", "double quantization (dq) does not apply to e8m0 scales"),
    ("int4-asym-g32-dq", "double quantization (dq) is for symmetric schemes"),
    ("int4-channel-ts", "tensor scale (ts) goes with a low-precision scale format"),
    ("int4-g32-g64", "'g64' repeats the granularity part"),
    ("int4-channel-g64", "'g64' repeats the granularity part"),
    ("int4-sym-asym", "'asym' repeats the symmetric part"),
    ("int4-out5-out1%", "'out1%' repeats the outliers part"),
    ("int4-g32-out0", "outliers: count must be >= 1, got 0"),
    ("int4-g32-out0%", "outliers: fraction must be in (0, 1), got 0.0"),
    ("int4-g32-out100%", "outliers: fraction must be in (0, 1), got 1.0"),
    ("int4-g32-zpint", "integer zero point (zpint) is for asymmetric integer schemes"),
    ("int4-sym-g32-zpint", "integer zero point (zpint) is for asymmetric integer schemes"),
    ("nf4-g64-zpint", "integer zero point (zpint) is for asymmetric integer schemes"),
    ("fp8-e4m3-channel-zpint", "integer zero point (zpint) is for asymmetric integer schemes"),
    ("int4-asym-g32-zpint-zpint", "'zpint' repeats the zero_point part"),
    ("int4-asym-g32-e8m0scale-zpint", "asymmetric needs a float scale format"),
])
def test_invalid_combinations(name, expected):
    with pytest.raises(ValueError) as err:
        Scheme.parse(name)
    assert repr(name) in str(err.value)
    assert expected in str(err.value)


@pytest.mark.parametrize("alias", list(ALIASES))
def test_alias_with_more_parts(alias):
    """Aliases are whole names; the error says so rather than calling the alias unknown."""
    name = f"{alias}-out1%"
    with pytest.raises(ValueError) as err:
        Scheme.parse(name)
    msg = str(err.value)
    assert repr(name) in msg and "unknown format" not in msg
    assert f"alias {alias!r}" in msg and ALIASES[alias] in msg


@pytest.mark.parametrize("name", ["", "   ", None, 4])
def test_empty_or_not_a_string(name):
    with pytest.raises(ValueError, match="non-empty string"):
        Scheme.parse(name)


def test_direct_construction_errors_list_choices():
    with pytest.raises(ValueError, match="valid formats: int2, int3"):
        Scheme("int16")
    with pytest.raises(ValueError, match="valid scale formats: fp32, fp16, bf16, e8m0, e4m3"):
        Scheme("int4", scale_format="fp8")
    with pytest.raises(ValueError, match="use tensor, channel or gN"):
        Scheme("int4", granularity="row")
    with pytest.raises(ValueError, match="block_size is only for block granularity"):
        Scheme("int4", granularity="channel", block_size=32)
    with pytest.raises(ValueError, match="block size must be between"):
        Scheme("int4", granularity="block")
    with pytest.raises(ValueError, match="unknown zero point domain 'none'.*'float' or 'int'"):
        Scheme("int4", symmetric=False, zero_point="none")


def test_with_():
    s = Scheme.parse("int4-sym-g32")
    assert str(s.with_(block_size=64)) == "int4-sym-g64"
    with pytest.raises(ValueError, match="asymmetric"):
        Scheme.parse("nf4-g64").with_(symmetric=False)

"""llama.cpp's GGUF imatrix files: the layout llama-imatrix writes (checked with the gguf
package's own reader), round trips, and the errors that name the file and entry."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.ggml.imatrix import Imatrix, read_imatrix, write_imatrix


def _sample() -> Imatrix:
    rng = np.random.default_rng(3)
    names = ["blk.1.ffn_down.weight", "blk.0.attn_q.weight", "blk.0.ffn_up_exps.weight"]
    sums = {names[0]: rng.random((1, 96)) * 50, names[1]: rng.random((1, 64)) * 50,
            names[2]: rng.random((4, 32)) * 50}
    counts = {names[0]: np.array([384]), names[1]: np.array([384]),
              names[2]: np.array([100, 0, 7, 277])}
    return Imatrix(sums, counts, chunk_count=3, chunk_size=128, datasets=["moby.txt"])


def test_layout_is_llama_imatrix_s(tmp_path) -> None:
    import gguf

    im = _sample()
    write_imatrix(tmp_path / "im.gguf", im)
    r = gguf.GGUFReader(tmp_path / "im.gguf")
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert kv == {"general.type": "imatrix", "imatrix.datasets": ["moby.txt"],
                  "imatrix.chunk_count": 3, "imatrix.chunk_size": 128}
    assert r.fields["imatrix.chunk_count"].types == [gguf.GGUFValueType.UINT32]
    names = sorted(im.sums)
    assert [t.name for t in r.tensors] == [f"{n}{s}" for n in names
                                          for s in (".in_sum2", ".counts")]
    for t in r.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        base, _, part = t.name.rpartition(".")
        n_mat = im.counts[base].size
        trailing = [n_mat] if n_mat > 1 else []  # ggml_n_dims drops trailing 1s
        if part == "in_sum2":  # ggml shape (n_columns, n_mat)
            assert list(t.shape) == [im.sums[base].shape[1], *trailing]
            np.testing.assert_array_equal(np.asarray(t.data).reshape(n_mat, -1), im.sums[base])
        else:
            assert list(t.shape) == [1, *trailing]
            np.testing.assert_array_equal(np.asarray(t.data).reshape(-1), im.counts[base])


def test_round_trip_is_byte_identical(tmp_path) -> None:
    im = _sample()
    write_imatrix(tmp_path / "a.gguf", im, format="gguf")
    back = read_imatrix(tmp_path / "a.gguf")
    assert not back.legacy and back.path == str(tmp_path / "a.gguf")
    for name in im.sums:
        np.testing.assert_array_equal(back.sums[name], im.sums[name])
        np.testing.assert_array_equal(back.counts[name], im.counts[name])
        np.testing.assert_array_equal(back.importance(name), im.importance(name))
    write_imatrix(tmp_path / "b.gguf", back)
    assert (tmp_path / "b.gguf").read_bytes() == (tmp_path / "a.gguf").read_bytes()


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path) -> None:
    path = tmp_path / "im.gguf"
    write_imatrix(path, _sample())
    before = path.read_bytes()
    empty = _sample()
    empty.datasets = []
    with pytest.raises(ValueError, match="at least one calibration dataset"):
        write_imatrix(path, empty)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["im.gguf"]


def test_truncated_gguf_is_named(tmp_path) -> None:
    write_imatrix(tmp_path / "a.gguf", _sample())
    data = (tmp_path / "a.gguf").read_bytes()
    for cut in (10, 200, len(data) - 40):  # header, tensor infos, the last sums
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"cut\.gguf: not a readable GGUF imatrix file"):
            read_imatrix(tmp_path / "cut.gguf")


def _gguf(path, kind: str | None, tensors: dict[str, np.ndarray], meta: bool = True) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), arch="")
    if kind:
        w.add_type(kind)
    if meta:
        w.add_array("imatrix.datasets", ["d"])
        w.add_uint32("imatrix.chunk_count", 1)
        w.add_uint32("imatrix.chunk_size", 8)
    for name, t in tensors.items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_wrong_type_missing_parts_and_metadata_are_named(tmp_path) -> None:
    ok = {"blk.0.attn_q.weight.in_sum2": np.ones((1, 8), np.float32),
          "blk.0.attn_q.weight.counts": np.ones((1, 1), np.float32)}
    p = tmp_path / "x.gguf"
    _gguf(p, "model", ok)
    with pytest.raises(ValueError, match=r"x\.gguf: a GGUF file with general.type 'model', "
                                         "not an importance matrix"):
        read_imatrix(p)
    _gguf(p, None, ok)
    with pytest.raises(ValueError, match="no general.type"):
        read_imatrix(p)
    _gguf(p, "imatrix", ok, meta=False)
    with pytest.raises(ValueError, match="imatrix metadata missing: imatrix.datasets"):
        read_imatrix(p)
    _gguf(p, "imatrix", {**ok, "blk.0.ffn_up.weight.in_sum2": np.ones((1, 8), np.float32)})
    with pytest.raises(ValueError, match=r"entry 'blk\.0\.ffn_up\.weight' has no "
                                         r"blk\.0\.ffn_up\.weight\.counts tensor"):
        read_imatrix(p)
    _gguf(p, "imatrix", {"blk.0.attn_q.weight.in_sum2": np.ones((1, 8), np.float16),
                         "blk.0.attn_q.weight.counts": np.ones((1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"blk\.0\.attn_q\.weight\.in_sum2 is F16, must be F32"):
        read_imatrix(p)
    _gguf(p, "imatrix", {"blk.0.attn_q.weight.in_sum2": np.ones((1, 9), np.float32),
                         "blk.0.attn_q.weight.counts": np.ones((2, 1), np.float32)})
    with pytest.raises(ValueError, match="9 sums do not split into 2 matrices"):
        read_imatrix(p)

"""llama.cpp's legacy imatrix `.dat` files: read, write, round trip, errors; what the importance
is (llama-quantize's division); format detection and conversion to and from GGUF form."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from lowbit.ggml.imatrix import Imatrix, detect_format, read_imatrix, write_imatrix
from lowbit.ggml.imatrix_dat import read_imatrix_dat, write_imatrix_dat


def _dat_bytes(entries: list[tuple[str, int, np.ndarray]], chunks: int, dataset: bytes) -> bytes:
    """A .dat file laid out by hand: count, then per entry name length, name, ncall, nval and
    values (mean * ncall), then the chunk count and the dataset name."""
    raw = struct.pack("<i", len(entries))
    for name, ncall, vals in entries:
        raw += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, vals.size)
        raw += np.asarray(vals, "<f4").tobytes()
    return raw + struct.pack("<ii", chunks, len(dataset)) + dataset


def test_reads_a_file_laid_out_as_llama_imatrix_writes_it(tmp_path) -> None:
    raw = _dat_bytes([("blk.0.attn_q.weight", 2, np.array([2.0, 4.0, 6.0]))], 2, b"wiki.txt")
    path = tmp_path / "imatrix.dat"
    path.write_bytes(raw)
    assert detect_format(path) == "dat"
    im = read_imatrix(path)
    assert im.legacy and im.path == str(path)
    np.testing.assert_array_equal(im.importance("blk.0.attn_q.weight"), [1.0, 2.0, 3.0])
    assert (im.chunk_count, im.datasets) == (2, ["wiki.txt"])
    write_imatrix(tmp_path / "again.dat", im)
    assert (tmp_path / "again.dat").read_bytes() == raw


def test_round_trip_keeps_every_value_and_the_file_order(tmp_path) -> None:
    rng = np.random.default_rng(0)
    names = [f"blk.{i}.ffn_down.weight" for i in (2, 0, 1)]  # not sorted: order must survive
    entries = [(n, 7, rng.random(64).astype(np.float32) * 7) for n in names]
    raw = _dat_bytes(entries, 7, b"calib.txt")
    (tmp_path / "a.dat").write_bytes(raw)
    back = read_imatrix_dat(tmp_path / "a.dat")
    assert list(back.sums) == names
    for name, _, v in entries:
        np.testing.assert_array_equal(back.importance(name), v / np.float32(7))
    write_imatrix_dat(tmp_path / "b.dat", back)
    assert (tmp_path / "b.dat").read_bytes() == raw


def test_importance_divides_per_matrix_and_gives_unseen_experts_ones() -> None:
    sums = np.array([[2.0, 4.0], [9.0, 3.0], [5.0, 5.0]], np.float32)
    im = Imatrix({"blk.0.ffn_up_exps.weight": sums},
                 {"blk.0.ffn_up_exps.weight": np.array([2, 3, 0])}, chunk_size=4)
    np.testing.assert_array_equal(im.importance("blk.0.ffn_up_exps.weight"),
                                  [1.0, 2.0, 3.0, 1.0, 1.0, 1.0])


def test_gguf_form_written_as_dat_follows_llama_imatrix(tmp_path) -> None:
    # save_imatrix_legacy: ncall = ceil(max count / chunk size); value = sum / count * ncall;
    # an entry that saw no token is left out; the last dataset names the file
    im = Imatrix({"a.weight": np.array([[10.0, 20.0]], np.float32),
                  "b.weight": np.array([[1.0, 1.0]], np.float32)},
                 {"a.weight": np.array([5]), "b.weight": np.array([0])},
                 chunk_count=2, chunk_size=4, datasets=["one.txt", "two.txt"])
    write_imatrix(tmp_path / "x.dat", im)
    expect = _dat_bytes([("a.weight", 2, np.array([10 / 5 * 2, 20 / 5 * 2]))], 2, b"two.txt")
    assert (tmp_path / "x.dat").read_bytes() == expect
    with pytest.raises(ValueError, match="needs its chunk_size"):
        write_imatrix(tmp_path / "y.dat", Imatrix(im.sums, im.counts, chunk_size=0))


def test_dat_written_as_gguf_keeps_the_importance(tmp_path) -> None:
    vals = np.array([3.0, 6.0, 0.75], np.float32)
    (tmp_path / "a.dat").write_bytes(_dat_bytes([("blk.1.attn_v.weight", 3, vals)], 3, b"t"))
    legacy = read_imatrix(tmp_path / "a.dat")
    write_imatrix(tmp_path / "a.gguf", legacy)
    assert detect_format(tmp_path / "a.gguf") == "gguf"
    back = read_imatrix(tmp_path / "a.gguf")
    assert not back.legacy and back.datasets == ["t"] and back.chunk_count == 3
    np.testing.assert_array_equal(back.importance("blk.1.attn_v.weight"), vals / np.float32(3))


def test_dat_errors_name_the_file_and_entry(tmp_path) -> None:
    path = tmp_path / "bad.dat"
    path.write_bytes(struct.pack("<ii", 1, 40) + b"short")
    with pytest.raises(ValueError, match=r"bad\.dat: truncated imatrix file while reading"):
        read_imatrix(path)
    full = _dat_bytes([("blk.0.attn_q.weight", 1, np.ones(8))], 1, b"x")
    path.write_bytes(full[:40])
    with pytest.raises(ValueError, match=r"truncated .* 'blk\.0\.attn_q\.weight''s 8 values"):
        read_imatrix(path)
    path.write_bytes(struct.pack("<i", 0))
    with pytest.raises(ValueError, match="bad.dat: not an imatrix file"):
        read_imatrix(path)
    with pytest.raises(ValueError, match="entry 'x': sums contain NaN"):
        Imatrix({"x": np.array([np.nan])}, {"x": np.array([1])})
    with pytest.raises(ValueError, match=r"entries \['y'\] have sums without counts"):
        Imatrix({"x": np.ones(2)}, {"x": np.array([1]), "y": np.array([1])})
    with pytest.raises(KeyError, match="no entry for tensor 'y'"):
        Imatrix({"x": np.ones(2)}, {"x": np.array([1])}).importance("y")
    with pytest.raises(ValueError, match="format must be one of gguf, dat"):
        write_imatrix(tmp_path / "z", Imatrix({"x": np.ones(2)}, {"x": np.array([1])}), "bin")

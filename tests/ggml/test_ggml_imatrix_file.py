"""llama.cpp's legacy imatrix `.dat` files: read, write, round trip."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from lowbit.ggml.imatrix import Imatrix, read_imatrix_dat, write_imatrix_dat


def test_reads_a_file_laid_out_as_llama_imatrix_writes_it(tmp_path) -> None:
    # built by hand: count, then name length, name, ncall, nval, values (mean * ncall),
    # then the chunk count and the dataset name
    vals = np.array([2.0, 4.0, 6.0], "<f4")
    raw = (struct.pack("<i", 1) + struct.pack("<i", 19) + b"blk.0.attn_q.weight"
           + struct.pack("<ii", 2, 3) + vals.tobytes() + struct.pack("<ii", 2, 8) + b"wiki.txt")
    path = tmp_path / "imatrix.dat"
    path.write_bytes(raw)
    im = read_imatrix_dat(path)
    np.testing.assert_array_equal(im.importance("blk.0.attn_q.weight"), [1.0, 2.0, 3.0])
    assert (im.ncalls, im.chunks, im.dataset) == ({"blk.0.attn_q.weight": 2}, 2, "wiki.txt")
    write_imatrix_dat(tmp_path / "again.dat", im)
    assert (tmp_path / "again.dat").read_bytes() == raw


def test_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    values = {f"blk.{i}.ffn_down.weight": rng.random(64).astype(np.float32) for i in range(3)}
    im = Imatrix(values=values, chunks=7, dataset="calib.txt")
    write_imatrix_dat(tmp_path / "a.dat", im)
    back = read_imatrix_dat(tmp_path / "a.dat")
    assert list(back.values) == list(values) and back.chunks == 7
    assert back.dataset == "calib.txt" and set(back.ncalls.values()) == {7}
    for name, v in values.items():
        np.testing.assert_allclose(back.values[name], v, rtol=1e-6)


def test_errors_name_the_file_and_entry(tmp_path) -> None:
    path = tmp_path / "bad.dat"
    path.write_bytes(struct.pack("<ii", 1, 40) + b"short")
    with pytest.raises(ValueError, match=r"bad\.dat: truncated imatrix file while reading"):
        read_imatrix_dat(path)
    with pytest.raises(ValueError, match="entry 'x': expected a finite 1-D vector"):
        write_imatrix_dat(path, Imatrix(values={"x": np.ones((2, 2))}))
    with pytest.raises(KeyError, match="no entry for tensor 'y'"):
        Imatrix(values={"x": np.ones(2)}).importance("y")

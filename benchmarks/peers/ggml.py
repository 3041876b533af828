"""llama.cpp's own tools on the benchmark's models: float GGUF, importance matrix, quantize.

The binaries come from ``scripts/install_llamacpp_tools.sh`` (llama.cpp vendored in
llama-cpp-python 0.3.36, built once into a cache). Every GGUF is quantized from llama.cpp's F32
dequantization of the model's shipped GGUF (the same float weights lowbit loads), with the token
embedding and output tensors kept F32, as lowbit keeps them float: only the decoder Linears are
quantized, and the row measures them alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def tools_bin() -> Path:
    """The folder of llama-quantize / llama-imatrix (built on first use)."""
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "install_llamacpp_tools.sh")],
                         env=env, check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def _run(args: list, log: Path) -> float:
    """Run a llama.cpp tool, its output to ``log``; the wall seconds."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run([str(a) for a in args], check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def f32_gguf(name: str, work: Path, threads: int) -> Path:
    """llama.cpp's F32 dequantization of the built-in model's GGUF (made once)."""
    from lowbit.models import BUILTINS

    out = work / name / "F32.gguf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        orig = Path(BUILTINS[name].fetch(work / name))
        _run([tools_bin() / "llama-quantize", "--allow-requantize", orig, out, "F32", threads],
             out.with_suffix(".log"))
    return out


def calibration_text(tokenizer, tokens, path: Path) -> Path:
    """The calibration windows decoded back to text, one after another, for llama-imatrix.

    llama.cpp tokenizes it again and cuts it in chunks of the window length, so it sees the same
    text as lowbit's windows (re-tokenization can shift a boundary by a token or two)."""
    if not path.exists():
        text = "".join(tokenizer.decode(row.tolist(), skip_special_tokens=True)
                       for row in tokens)
        path.write_text(text, encoding="utf-8")
    return path


def imatrix(name: str, work: Path, text: Path, chunk: int, chunks: int, threads: int) -> Path:
    """llama-imatrix on ``text``: ``chunks`` chunks of ``chunk`` tokens (made once)."""
    out = work / name / f"imatrix-{chunks}x{chunk}.gguf"
    if not out.exists():
        _run([tools_bin() / "llama-imatrix", "-m", f32_gguf(name, work, threads), "-f", text,
              "-o", out, "-c", chunk, "--chunks", chunks, "-t", threads, "--no-ppl"],
             out.with_suffix(".log"))
    return out


def quantize(f32: Path, out: Path, qtype: str, threads: int,
             imatrix_file: Path | None = None) -> float:
    """llama-quantize ``f32`` -> ``out`` as ``qtype`` (embeddings and output kept F32)."""
    args = [tools_bin() / "llama-quantize", "--token-embedding-type", "f32",
            "--output-tensor-type", "f32"]
    if imatrix_file is not None:
        args += ["--imatrix", imatrix_file]
    return _run([*args, f32, out, qtype, threads], out.with_suffix(".log"))


def linear_tensors(path: Path) -> dict[str, tuple[str, bytes]]:
    """The decoder Linear tensors of a GGUF: name -> (type, raw bytes)."""
    import gguf

    out = {}
    for t in gguf.GGUFReader(path).tensors:
        if t.name.startswith("blk.") and (".attn_" in t.name or ".ffn_" in t.name) \
                and "norm" not in t.name and len(t.shape) >= 2:
            out[t.name] = (t.tensor_type.name, bytes(t.data.view("uint8").reshape(-1)))
    return out


def linear_bits(path: Path) -> tuple[float, str]:
    """Bits per weight of the decoder Linears of a GGUF, and the count of each type."""
    import gguf

    nbytes = nel = 0
    types: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        if t.name.startswith("blk.") and (".attn_" in t.name or ".ffn_" in t.name) \
                and "norm" not in t.name and len(t.shape) >= 2:
            nbytes, nel = nbytes + int(t.n_bytes), nel + int(t.n_elements)
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return nbytes * 8 / nel, " ".join(f"{k}x{v}" for k, v in sorted(types.items()))

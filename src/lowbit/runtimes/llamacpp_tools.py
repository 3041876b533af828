"""llama.cpp's own command-line tools (llama-imatrix, llama-quantize) as reference programs.

`scripts/install_llamacpp_tools.sh` builds them once into
`~/.cache/lowbit/tools/llama.cpp-<version>-<key>/bin` (or under `$LOWBIT_TOOLS_CACHE`);
`$LOWBIT_LLAMACPP_TOOLS` may name a bin folder instead. Finding them runs nothing.
Tests and benchmarks use them to check lowbit's importance matrix and its export against the
independent implementation.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

TOOLS = ("llama-imatrix", "llama-quantize", "llama-perplexity")
ENV_BIN = "LOWBIT_LLAMACPP_TOOLS"


def _complete(folder: Path) -> bool:
    return all(os.access(folder / t, os.X_OK) for t in TOOLS)


def tools_dir() -> Path | None:
    """The folder holding llama.cpp's tools, or None when they are not built."""
    given = os.environ.get(ENV_BIN)
    if given:
        return Path(given) if _complete(Path(given)) else None
    cache = Path(os.environ.get("LOWBIT_TOOLS_CACHE", Path.home() / ".cache/lowbit/tools"))
    found = [b for b in cache.glob("llama.cpp-*/bin") if _complete(b)]
    return max(found, key=lambda b: b.stat().st_mtime) if found else None


def why_unavailable() -> str:
    """Why `tools_dir()` is None ("" when the tools are there); fit for `pytest.skip`."""
    if tools_dir() is not None:
        return ""
    where = os.environ.get(ENV_BIN) or "~/.cache/lowbit/tools/llama.cpp-*/bin"
    return (f"llama.cpp's tools ({', '.join(TOOLS)}) are not built in {where}; build them with "
            "`make llamacpp-tools` (scripts/install_llamacpp_tools.sh)")


def run_tool(tool: str, args: list[str], *, timeout: float = 600) -> str:
    """Run one of the tools; its combined output, or RuntimeError with the output's tail."""
    folder = tools_dir()
    if folder is None:
        raise RuntimeError(why_unavailable())
    cmd = [str(folder / tool), *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    out = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"{tool} failed with exit code {done.returncode}: ...{out[-1500:]}")
    return out


def llama_imatrix(model: str | os.PathLike, text: str | os.PathLike, out: str | os.PathLike, *,
                  ctx: int, chunks: int, output_format: str = "gguf", threads: int = 1) -> Path:
    """`llama-imatrix` on `model` over `chunks` chunks of `ctx` tokens of `text` (one sequence
    per batch, no perplexity), writing `out` in `output_format` ("gguf" or "dat")."""
    run_tool("llama-imatrix", ["-m", model, "-f", text, "-o", out, "-c", ctx, "-b", ctx,
                               "--chunks", chunks, "--no-ppl", "-t", threads,
                               "--output-format", output_format])
    return Path(out)


def llama_quantize(src: str | os.PathLike, out: str | os.PathLike, preset: str, *,
                   imatrix: str | os.PathLike | None = None, allow_requantize: bool = False,
                   threads: int = 1) -> Path:
    """`llama-quantize [--imatrix FILE] SRC OUT PRESET THREADS`."""
    flags = ["--allow-requantize"] if allow_requantize else []
    if imatrix is not None:
        flags += ["--imatrix", imatrix]
    run_tool("llama-quantize", [*flags, src, out, preset, threads])
    return Path(out)

"""benchmarks/speed_gpu.py: refuses to run without CUDA (writing nothing), and its
``--interpret-smoke`` mode runs a tiny model through every lowbit row's Triton kernels."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "speed_gpu.py"

pytest.importorskip("triton", reason="triton is not installed (optional: lowbit[triton])")
pytest.importorskip("transformers", reason="the benchmark builds models with transformers")


def load_script():
    spec = importlib.util.spec_from_file_location("speed_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["speed_gpu"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_cuda_it_says_so_and_writes_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "speed_gpu.md"
    assert load_script().main(["--out", str(out)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not out.exists()


def test_interpret_smoke_runs_every_lowbit_row_through_triton(tmp_path: Path) -> None:
    out = tmp_path / "smoke.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(SCRIPT), "--interpret-smoke", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "not a measurement" in text
    rows = [line for line in text.splitlines() if line.startswith("| tiny | lowbit ")]
    schemes = load_script().LOWBIT_SCHEMES.values()
    assert [r.split(" | ")[1] for r in rows] == [f"lowbit {s}" for s in schemes]
    for r in rows:  # every quantized layer (7 in the one-layer model) ran the Triton kernel
        assert "triton-interpret x7" in r and "reference" not in r, r
    assert "| tiny | bf16 |" in text

"""Fuzz lowbit's readers with thousands of mutated files (tests/fuzz_engine.py).

Mutates a tiny checkpoint written by lowbit (shard bytes and headers, lowbit.json bytes and
fields, path games, config and tokenizer files, files deleted, replaced by folders or symlinks
out of the folder) and the structural fields of a tiny GGUF header (counts, lengths, value
types, dimensions, tensor types and offsets, cuts). Each case goes to every reader: checkpoint
load (verifying), verify and inspect; GGUF load. Goal: 0 tracebacks, 0 silent acceptances of
changed content, 0 hangs (per-case timeout).

    PYTHONPATH=src .venv/bin/python benchmarks/fuzz_readers.py   # -> benchmarks/results/fuzz.md
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the engine

from tests import fuzz_engine as fe  # noqa: E402

from lowbit.storage.atomic import write_text_atomic  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "fuzz.md"


def render(tally: fe.Tally, args: argparse.Namespace, seconds: float) -> str:
    """The results file: outcomes by reader, totals against the goals, every bad case."""
    readers = sorted({r for r, _ in tally.counts})
    outcomes = [fe.CLEAN, fe.SAME, fe.TRACEBACK, fe.SILENT, fe.HANG]
    lines = ["# Fuzzing lowbit's readers", "",
             f"`PYTHONPATH=src .venv/bin/python benchmarks/fuzz_readers.py --checkpoints "
             f"{args.checkpoints} --gguf {args.gguf} --seed {args.seed}` ({seconds:.0f} s, "
             f"{platform.machine()}, Python {platform.python_version()})", "",
             "| reader | cases | " + " | ".join(outcomes) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in outcomes) + " |"]
    for r in readers:
        row = [tally.counts[r, o] for o in outcomes]
        lines.append(f"| {r} | {sum(row)} | " + " | ".join(map(str, row)) + " |")
    lines += ["", f"Cases tried: {args.checkpoints} checkpoints (x3 readers) + {args.gguf} "
              f"GGUF files = {tally.total()} reads. Clean errors: {tally.total(fe.CLEAN)}. "
              f"Tracebacks: {tally.total(fe.TRACEBACK)} (goal 0). Silent acceptances of "
              f"changed content: {tally.total(fe.SILENT)} (goal 0). Hangs (over "
              f"{args.timeout} s): {tally.total(fe.HANG)} (goal 0).", "",
              "\"identical\" is a successful read whose tensors, config and tokenizer equal the "
              "original's (for inspect, which never reads tensor data: the structure was "
              "sound, e.g. a flipped data byte, which verify and load catch by hash).", "",
              "Not covered: byte flips inside GGUF values (token strings, float "
              "hyperparameters, tensor data). GGUF has no checksum, so such a change is "
              "undetectable by any reader; the GGUF mutations here are structural (counts, "
              "lengths, value types, dimensions, tensor types and offsets, cuts).", ""]
    if tally.bad:
        lines += ["## Bad cases", ""] + [f"- {b}" for b in tally.bad[:200]]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", type=int, default=3000)
    p.add_argument("--gguf", type=int, default=2000)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--timeout", type=int, default=20, help="seconds per read")
    args = p.parse_args()
    logging.disable(logging.WARNING)  # verify=False logs a warning on every case
    t0 = time.perf_counter()
    tally = fe.Tally()
    with tempfile.TemporaryDirectory() as tmp:
        ck, gguf = fe.make_targets(Path(tmp))
        fe.fuzz_checkpoints(ck, Path(tmp) / "work", args.checkpoints, args.seed, tally,
                            args.timeout)
        fe.fuzz_gguf(gguf, Path(tmp) / "work.gguf", args.gguf, args.seed, tally, args.timeout)
    text = render(tally, args, time.perf_counter() - t0)
    write_text_atomic(RESULTS, text)
    print(text)
    return 0 if not tally.bad else 1


if __name__ == "__main__":
    sys.exit(main())

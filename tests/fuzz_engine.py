"""Mutation fuzzing of lowbit's readers, shared by tests/test_fuzz_readers.py (hundreds of cases)
and benchmarks/fuzz_readers.py (thousands).

A case copies a sound file or folder, changes it (truncation, byte flips, zeroed runs, header
lies, path games, fields of other types), and feeds it to a reader. The only acceptable results
are a lowbit error (ValueError or OSError), or a read whose content (tensors, config, tokenizer)
equals the original's. Anything else is a traceback, a silent acceptance, or a hang.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

CLEAN, SAME, TRACEBACK, SILENT, HANG = "clean error", "identical", "traceback", "silent", "hang"
SHARD = "model-00001.safetensors"


class _Hang(Exception):
    pass


@dataclass
class Tally:
    """Outcomes by reader, and a description of every bad one."""

    counts: Counter = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)

    def add(self, reader: str, outcome: str, case: str) -> None:
        self.counts[reader, outcome] += 1
        if outcome in (TRACEBACK, SILENT, HANG):
            self.bad.append(f"{reader}: {outcome}: {case}")

    def total(self, outcome: str | None = None) -> int:
        return sum(n for (_, o), n in self.counts.items() if outcome in (None, o))


def content(model: torch.nn.Module, tokenizer: Any) -> tuple:
    """What a read must reproduce: every tensor, the config, the tokenizer's vocabulary."""
    cfg = model.config.to_dict()
    cfg.pop("lowbit_source", None)
    cfg.pop("_name_or_path", None)  # the folder it was read from
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    vocab = tokenizer.get_vocab() if tokenizer is not None else None
    return state, json.dumps(cfg, sort_keys=True, default=str), vocab


def same(a: tuple, b: tuple) -> bool:
    return (a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
            and a[1:] == b[1:])


def classify(read: Callable[[], tuple | bool | None], reference: tuple | None,
             seconds: int) -> str:
    """Run one read under a timeout; ``read`` returns content to compare, True (a verdict of
    broken: a clean outcome), or None (accepted, nothing to compare)."""
    def alarm(*_):
        raise _Hang

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        got = read()
    except _Hang:
        return HANG
    except (ValueError, OSError):
        return CLEAN
    except Exception:  # anything else is a traceback for the user
        return TRACEBACK
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    if got is True:
        return CLEAN
    if got is None or reference is None:
        return SAME
    return SAME if same(got, reference) else SILENT


def make_targets(folder: Path) -> tuple[Path, Path]:
    """A tiny quantized checkpoint (two schemes, one with double quantization) and the tiny
    GGUF of tests/conftest.py, written by lowbit and gguf-py into ``folder``."""
    from transformers import LlamaForCausalLM

    import lowbit
    from tests.conftest import build_tiny_tokenizer, tiny_llama_config, write_tiny_gguf

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer))).eval()
    gguf = write_tiny_gguf(model, folder / "tiny.gguf")
    lowbit.quantize(model, "int4-asym-g32", progress=False,
                    overrides={"down_proj": "nf4-g64-dq"})
    return lowbit.save(model, folder / "ck", tokenizer=tokenizer), gguf


# ---------------------------------------------------------------- byte and JSON mutations


def mutate_bytes(data: bytes, rng: random.Random, region: tuple[int, int] | None = None
                 ) -> tuple[str, bytes]:
    lo, hi = region or (0, len(data))
    kind = rng.choice(["truncate", "flip", "flip", "zeros", "append", "cut-middle"])
    at = rng.randrange(lo, max(lo + 1, hi))
    if kind == "truncate":
        return f"truncate at {at}", data[:at]
    if kind == "flip":
        bit = 1 << rng.randrange(8)
        return f"flip bit {bit} of byte {at}", data[:at] + bytes([data[at] ^ bit]) + data[at + 1:]
    if kind == "zeros":
        n = rng.choice([1, 8, 64])
        return f"zero {n} bytes at {at}", data[:at] + bytes(min(n, len(data) - at)) + data[at + n:]
    if kind == "append":
        return "append 100 bytes", data + bytes(rng.randrange(256) for _ in range(100))
    n = rng.choice([1, 4, 8, 100])
    return f"remove {n} bytes at {at}", data[:at] + data[at + n:]


_PATHS = ["../../other/model.safetensors", "/etc/hostname", "sub/x.safetensors", "..", ".",
          "", "model-00001.safetensors/..", "\\..\\x", "config.json"]
_ODD = [None, 0, -1, 1.5, True, "x", [], {}, [1], 2**70, "../x"]


def _json_paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _json_paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _json_paths(v, (*prefix, i))
    return out


def mutate_json(meta: dict, rng: random.Random) -> tuple[str, dict]:
    """Change one value of the parsed ``lowbit.json``: path games, odd types, nearby numbers,
    deleted keys."""
    meta = json.loads(json.dumps(meta))
    path = rng.choice(_json_paths(meta)[1:])
    *parents, last = path
    holder = meta
    for p in parents:
        holder = holder[p]
    old = holder[last]
    kind = rng.choice(["path", "odd", "number", "delete"])
    if kind == "path" and "tensors" in path[:1]:
        holder[last] = rng.choice(_PATHS)
    elif kind == "number" and isinstance(old, int) and not isinstance(old, bool):
        holder[last] = old + rng.choice([-1, 1, 2**31, -old])
    elif kind == "delete" and isinstance(holder, dict):
        del holder[last]
    elif kind == "path" and isinstance(holder, dict) and path[0] == "files":
        holder[rng.choice(_PATHS)] = holder.pop(last)
    else:
        holder[last] = rng.choice(_ODD)
        kind = "odd"
    new = holder.get(last, "<deleted>") if isinstance(holder, dict) else holder[last]
    return f"lowbit.json {kind} at {list(path)}: {old!r:.40} -> {new!r:.40}", meta


# ---------------------------------------------------------------- checkpoints


def checkpoint_case(base: Path, work: Path, rng: random.Random) -> str:
    """Copy ``base`` to ``work`` and damage one thing; return what was done."""
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(base, work)
    target = rng.choice(["shard", "shard", "json-bytes", "json-fields", "json-fields",
                         "config.json", "tokenizer.json", "filesystem"])
    if target == "json-fields":
        what, meta = mutate_json(json.loads((work / "lowbit.json").read_text()), rng)
        (work / "lowbit.json").write_text(json.dumps(meta))
        return what
    if target == "filesystem":
        name = rng.choice([SHARD, "config.json", "tokenizer.json"])
        action = rng.choice(["delete", "directory", "symlink out", "empty"])
        (work / name).unlink()
        if action == "directory":
            (work / name).mkdir()
        elif action == "symlink out":
            (work / name).symlink_to(base / name)
        elif action == "empty":
            (work / name).write_bytes(b"")
        return f"{name}: {action}"
    name = {"shard": SHARD, "json-bytes": "lowbit.json"}.get(target, target)
    data = (work / name).read_bytes()
    region = (0, struct.unpack_from("<Q", data)[0] + 8) if name == SHARD and rng.random() < .5 \
        else None
    what, data = mutate_bytes(data, rng, region)
    (work / name).write_bytes(data)
    return f"{name}: {what}"


def checkpoint_readers(folder: Path) -> dict[str, Callable[[], Any]]:
    """load (verifying), verify, inspect: each returns content, True (broken) or None."""
    from lowbit.storage.checkpoint import load
    from lowbit.storage.integrity import check

    def verify() -> Any:
        if not check(folder, hashes=True).sound:
            return True
        return content(*load(folder, verify=False))  # "sound" must mean identical content

    def inspect() -> Any:
        return True if not check(folder, hashes=False).sound else None

    return {"load": lambda: content(*load(folder)), "verify": verify, "inspect": inspect}


def fuzz_checkpoints(base: Path, work: Path, cases: int, seed: int, tally: Tally,
                     seconds: int = 20) -> None:
    from lowbit.storage.checkpoint import load

    reference = content(*load(base))
    rng = random.Random(seed)
    for i in range(cases):
        what = checkpoint_case(base, work, rng)
        for reader, read in checkpoint_readers(work).items():
            tally.add(f"checkpoint {reader}", classify(read, reference, seconds), f"#{i} {what}")


# ---------------------------------------------------------------- GGUF


def gguf_fields(data: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of every structural field of a GGUF header: counts, lengths,
    value types, dimension counts, dimensions, tensor types and offsets."""
    fields = [(8, "<Q"), (16, "<Q")]
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos = 24
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def string(pos: int) -> int:
        fields.append((pos, "<Q"))
        return pos + 8 + struct.unpack_from("<Q", data, pos)[0]

    for _ in range(n_kv):
        pos = string(pos)
        fields.append((pos, "<I"))
        vtype = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        if vtype == 8:
            pos = string(pos)
        elif vtype == 9:
            item, count = struct.unpack_from("<IQ", data, pos)
            fields += [(pos, "<I"), (pos + 4, "<Q")]
            pos += 12
            for _ in range(count):
                pos = string(pos) if item == 8 else pos + sizes[item]
        else:
            pos += sizes[vtype]
    for _ in range(n_tensors):
        pos = string(pos)
        n_dims = struct.unpack_from("<I", data, pos)[0]
        fields.append((pos, "<I"))
        fields += [(pos + 4 + 8 * d, "<Q") for d in range(n_dims)]
        pos += 4 + 8 * n_dims
        fields += [(pos, "<I"), (pos + 4, "<Q")]
        pos += 12
    return fields


def gguf_case(data: bytes, fields: list[tuple[int, str]], rng: random.Random
              ) -> tuple[str, bytes]:
    """A structural change: a header field set to a nearby or absurd value, or a cut."""
    if rng.random() < 0.3:
        at = rng.randrange(len(data))
        return f"truncate at {at}", data[:at]
    pos, fmt = rng.choice(fields)
    old = struct.unpack_from(fmt, data, pos)[0]
    top = 2**32 - 1 if fmt == "<I" else 2**64 - 1
    new = rng.choice([old + 1, max(0, old - 1), 0, top, old * 2 + 1, rng.randrange(top)])
    new = min(max(new, 0), top)
    out = bytearray(data)
    struct.pack_into(fmt, out, pos, new)
    return f"field at byte {pos} ({fmt}): {old} -> {new}", bytes(out)


def fuzz_gguf(path: Path, work: Path, cases: int, seed: int, tally: Tally,
              seconds: int = 30) -> None:
    from lowbit.models import load_model

    reference = content(*load_model(str(path)))
    data = path.read_bytes()
    fields = gguf_fields(data)
    rng = random.Random(seed)
    for i in range(cases):
        what, changed = gguf_case(data, fields, rng)
        work.write_bytes(changed)
        outcome = classify(lambda: content(*load_model(str(work))), reference, seconds)
        tally.add("gguf load", outcome, f"#{i} {what}")

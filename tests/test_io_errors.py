"""Errors that name their cause: I/O failures, bad GGUF files, bad config/tokenizer/text files.
Each gives one line naming the file (or field) and the cause, and exit 2 from the CLI."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

import lowbit
from lowbit.cli import main
from lowbit.storage import safetensors_io


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def _failing_open(code: int, after: int = 0):
    """``open`` whose files raise OSError(code) once ``after`` bytes were written."""
    real_open = open

    def fake(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "w" not in mode:
            return f
        written = [0]
        real_write = f.write

        def write(data):
            if written[0] + len(data) > after:
                raise OSError(code, os.strerror(code))
            written[0] += len(data)
            return real_write(data)

        f.write = write
        return f
    return fake


def test_disk_full_while_writing_a_shard(tiny_hf_dir: Path, tmp_path: Path, capsys,
                                         monkeypatch) -> None:
    monkeypatch.setattr(safetensors_io, "open", _failing_open(errno.ENOSPC, 1000),
                        raising=False)
    code, err = run(capsys, "quantize", str(tiny_hf_dir), "--scheme", "int4-asym-g32",
                    "-o", str(tmp_path / "out"))
    assert code == 2
    assert "model-00001.safetensors: No space left on device (ENOSPC)" in err
    assert "Traceback" not in err and err.count("error:") == 1
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_read_only_output_for_lowbit_json(tiny_hf_dir: Path, tmp_path: Path, capsys,
                                          monkeypatch) -> None:
    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real_fdopen(fd, mode, *args, **kwargs)
        if "w" in mode:
            f.write = lambda data: (_ for _ in ()).throw(
                OSError(errno.EROFS, os.strerror(errno.EROFS)))
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    code, err = run(capsys, "quantize", str(tiny_hf_dir), "--scheme", "int4-asym-g32",
                    "-o", str(tmp_path / "out"))
    assert code == 2 and "lowbit.json: Read-only file system (EROFS)" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [
    ["quantize", "SRC", "--scheme", "int4-asym-g32", "-o", "FILE/sub/ck"],
    ["export", "SRC", "-o", "FILE/x.gguf", "--type", "Q8_0"],
    ["eval", "SRC", "--json", "FILE/x.json", "--no-speed"],
])
def test_output_under_a_file(argv, tiny_hf_dir: Path, tmp_path: Path, capsys) -> None:
    file = tmp_path / "plain-file"
    file.write_text("x")
    argv = [a.replace("SRC", str(tiny_hf_dir)).replace("FILE", str(file)) for a in argv]
    code, err = run(capsys, *argv)
    assert code == 2 and f"{file}: is a file, not a folder" in err and "(ENOTDIR)" in err


def test_save_names_the_file_on_disk_full(tiny_llama, tmp_path: Path, monkeypatch) -> None:
    model, tok = tiny_llama
    lowbit.quantize(model, "int4-asym-g32", progress=False)
    monkeypatch.setattr(safetensors_io, "open", _failing_open(errno.ENOSPC), raising=False)
    with pytest.raises(OSError, match="No space left") as err:
        lowbit.save(model, tmp_path / "ck", tokenizer=tok)
    assert err.value.errno == errno.ENOSPC and err.value.filename.endswith(".safetensors")


def test_invalid_config_json_is_named(tiny_hf_dir: Path, tmp_path: Path, capsys) -> None:
    (tiny_hf_dir / "config.json").write_text('{"model_type": "llama", ')
    for argv in (["quantize", str(tiny_hf_dir), "--scheme", "int4-asym-g32", "-o",
                  str(tmp_path / "o")], ["generate", str(tiny_hf_dir), "hi"]):
        code, err = run(capsys, *argv)
        assert code == 2 and "config.json is not valid JSON" in err, err


def test_missing_tokenizer_files_are_named(tiny_hf_dir: Path, tmp_path: Path, capsys) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tiny_hf_dir / name).unlink(missing_ok=True)
    code, err = run(capsys, "quantize", str(tiny_hf_dir), "--scheme", "int4-asym-g32",
                    "-o", str(tmp_path / "o"))
    assert code == 2 and f"{tiny_hf_dir} has no tokenizer files" in err


def test_broken_tokenizer_file_is_named(tiny_hf_dir: Path, tmp_path: Path, capsys) -> None:
    (tiny_hf_dir / "tokenizer.json").write_text("{not json")
    code, err = run(capsys, "quantize", str(tiny_hf_dir), "--scheme", "int4-asym-g32",
                    "-o", str(tmp_path / "o"))
    assert code == 2 and "cannot read the tokenizer from tokenizer.json" in err


def test_binary_evaluation_text_names_the_file(tiny_hf_dir: Path, tmp_path: Path,
                                               capsys) -> None:
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    code, err = run(capsys, "eval", str(tiny_hf_dir), "--text", str(binary), "--no-speed")
    assert code == 2 and f"{binary} is not UTF-8 text" in err
    questions = tmp_path / "q.jsonl"
    questions.write_bytes(b'{"question": "\xff"}\n')
    with pytest.raises(ValueError, match="q.jsonl is not UTF-8 text"):
        lowbit.data.load_questions(questions)


# ---------------------------------------------------------------- GGUF files


def _gguf_counts(path: Path) -> tuple[int, int]:
    return struct.unpack_from("<QQ", path.read_bytes(), 8)


def _set_counts(path: Path, tensors: int, kvs: int) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into("<QQ", data, 8, tensors, kvs)
    path.write_bytes(data)


def _cut(size):
    def cut(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: size if size > 0 else len(data) // 2])
    return cut


def _lie(dt: int, dk: int):
    def lie(path: Path) -> None:
        t, k = _gguf_counts(path)
        _set_counts(path, t + dt, k + dk)
    return lie


GGUF_CASES = {
    "cut at 5000 bytes": (_cut(5000), "truncated"),
    "cut in half": (_cut(0), "truncated"),
    "one tensor too many": (_lie(1, 0), "tensor"),
    "one tensor too few": (_lie(-1, 0), "tensor count is too small"),
    "one key too many": (_lie(0, 1), "header counts are wrong"),
    "one key too few": (_lie(0, -1), "header counts are wrong"),
    "counts far too large": (_lie(10**9, 0), "more than"),
}


@pytest.mark.parametrize("case", list(GGUF_CASES))
def test_damaged_gguf_is_named(tiny_gguf: Path, capsys, case: str) -> None:
    damage, expected = GGUF_CASES[case]
    damage(tiny_gguf)
    with pytest.raises(ValueError) as err:
        lowbit.load_model(str(tiny_gguf))
    message = str(err.value)
    assert message.startswith(f"{tiny_gguf} is not a valid GGUF file") and expected in message
    code, cli_err = run(capsys, "generate", str(tiny_gguf), "hi")
    assert code == 2 and str(tiny_gguf) in cli_err


def test_sound_gguf_passes_the_check(tiny_gguf: Path) -> None:
    from lowbit.models.gguf_check import check_gguf

    check_gguf(tiny_gguf)

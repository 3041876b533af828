"""Trust what is on disk: hashes checked on load, ``lowbit verify``, ``lowbit inspect``'s
structural checks, and containment of every file name in ``lowbit.json``."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.cli import main
from lowbit.storage.checkpoint import META_FILE
from lowbit.storage.safetensors_io import read_header, read_tensor, write_file

SHARD = "model-00001.safetensors"
FIXTURE_V1 = Path(__file__).parent / "fixtures" / "checkpoint_v1"


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny quantized checkpoint, written once; tests work on copies."""
    from transformers import LlamaForCausalLM

    from tests.conftest import tiny_llama_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tiny_tokenizer))).eval()
    lowbit.quantize(model, "int4-asym-g32", progress=False,
                    overrides={"down_proj": "nf4-g64-dq"})
    return lowbit.save(model, tmp_path_factory.mktemp("saved") / "ck", tokenizer=tiny_tokenizer)


@pytest.fixture
def ck(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "ck"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _meta(ck: Path) -> dict:
    return json.loads((ck / META_FILE).read_text())


def _write_meta(ck: Path, meta: dict) -> None:
    (ck / META_FILE).write_text(json.dumps(meta))


def _rewrite_shard(ck: Path, change) -> None:
    """Rewrite the shard through ``change(tensors)`` and record its new hash, so that only the
    structural checks can find what changed."""
    path = ck / SHARD
    tensors = {n: read_tensor(path, i) for n, i in read_header(path).items()}
    change(tensors)
    digest, size = write_file(path, tensors, {"format": "pt"})
    meta = _meta(ck)
    meta["files"][SHARD] = {"sha256": digest, "bytes": size}
    _write_meta(ck, meta)


def test_overwritten_scales_are_caught_on_load_and_by_verify(ck: Path, capsys, caplog) -> None:
    info = read_header(ck / SHARD)["model.layers.0.mlp.up_proj.qweight.scale"]
    data = bytearray((ck / SHARD).read_bytes())
    data[info.start:info.start + 64] = bytes(64)
    (ck / SHARD).write_bytes(data)
    with pytest.raises(ValueError, match=rf"{SHARD} has sha256 .* its bytes changed"):
        lowbit.load(ck)
    code, _, err = run(capsys, "verify", str(ck))
    assert code == 1 and SHARD in err and "bytes changed" in err
    code, _, err = run(capsys, "generate", str(ck), "hi", "--max-new-tokens", "1")
    assert code == 2 and "bytes changed" in err
    with caplog.at_level(logging.WARNING):
        model, _ = lowbit.load(ck, verify=False)  # skipped on request, and said so
    assert "without verifying" in caplog.text
    assert model is not None


def test_changed_config_is_caught(ck: Path) -> None:
    cfg = json.loads((ck / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-3
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json has (sha256|\d+ bytes)"):
        lowbit.load(ck)


def test_sound_checkpoint_passes_verify_and_inspect(ck: Path, capsys) -> None:
    code, out, _ = run(capsys, "verify", str(ck))
    assert code == 0 and "sound" in out
    assert run(capsys, "inspect", str(ck))[0] == 0


def _truncate(ck: Path) -> None:
    (ck / SHARD).write_bytes((ck / SHARD).read_bytes()[:5000])


def _directory(ck: Path) -> None:
    (ck / SHARD).unlink()
    (ck / SHARD).mkdir()


def _flip_header(ck: Path) -> None:  # a shape digit in the safetensors header
    data = (ck / SHARD).read_bytes()
    at = data.index(b'"shape":[259,64]')
    (ck / SHARD).write_bytes(data[:at] + b'"shape":[259,65]' + data[at + 16:])


def _lie_nbytes(ck: Path) -> None:
    meta = _meta(ck)
    meta["layers"]["model.layers.0.mlp.up_proj"]["nbytes"] += 1
    _write_meta(ck, meta)


def _drop_layer_part(ck: Path) -> None:
    _rewrite_shard(ck, lambda t: t.pop("model.layers.1.mlp.up_proj.qweight.scale"))


def _wrong_shape(ck: Path) -> None:
    _rewrite_shard(ck, lambda t: t.update({"model.norm.weight": torch.ones(65).half()}))


def _wrong_dtype(ck: Path) -> None:
    _rewrite_shard(ck, lambda t: t.update({"model.norm.weight": torch.ones(64)}))


def _unlisted_tensor(ck: Path) -> None:
    meta = _meta(ck)
    meta["tensors"]["model.layers.1.mlp.up_proj.qweight.zero2"] = SHARD
    _write_meta(ck, meta)


def _layer_shape(ck: Path) -> None:
    meta = _meta(ck)
    meta["layers"]["model.layers.0.self_attn.q_proj"]["shape"] = [64, 31]
    _write_meta(ck, meta)


BREAKAGES = {
    "truncated shard": (_truncate, "has 5000 bytes"),
    "shard replaced by a directory": (_directory, "not a regular file"),
    "missing shard": (lambda ck: (ck / SHARD).unlink(), "is missing"),
    "missing tensor": (_drop_layer_part, "needs 'codes' and 'scale'"),
    "wrong float shape": (_wrong_shape, "model.norm.weight' has shape (65,)"),
    "wrong dtype": (_wrong_dtype, "torch.float32, the checkpoint keeps floats in"),
    "flipped header": (_flip_header, "truncated or its offsets are wrong"),
    "listed tensor absent": (_unlisted_tensor, "is not in shard"),
    "layer shape": (_layer_shape, "model.layers.0.self_attn.q_proj"),
    "byte count lie": (_lie_nbytes, "bytes"),
    "missing config": (lambda ck: (ck / "config.json").unlink(), "config.json"),
}


@pytest.mark.parametrize("kind", list(BREAKAGES))
def test_inspect_and_verify_mark_broken_checkpoints(ck: Path, capsys, kind: str) -> None:
    breakage, expected = BREAKAGES[kind]
    breakage(ck)
    for command in ("inspect", "verify"):
        code, _, err = run(capsys, command, str(ck))
        assert code == 1, (command, err)
        assert "is broken" in err and expected in err, (command, err)
    if kind not in ("wrong dtype", "byte count lie"):  # the values read are still exact
        with pytest.raises((ValueError, OSError)):
            lowbit.load(ck, verify=False)


PATH_GAMES = ["../../other/model.safetensors", "/etc/passwd", "sub/model.safetensors", "..",
              "", "a\\b"]


@pytest.mark.parametrize("entry", PATH_GAMES)
def test_paths_outside_the_folder_are_refused(ck: Path, tmp_path: Path, entry: str) -> None:
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(ck / SHARD, other / "model.safetensors")  # what an escape would read
    meta = _meta(ck)
    meta["tensors"]["model.norm.weight"] = entry
    _write_meta(ck, meta)
    with pytest.raises(ValueError, match=r"is not a plain file name inside the checkpoint"):
        lowbit.load(ck, verify=False)
    assert repr(entry) in str(pytest.raises(ValueError, lowbit.load, ck).value)


def test_symlink_out_of_the_folder_is_refused(ck: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.safetensors"
    shutil.move(ck / SHARD, outside)
    (ck / SHARD).symlink_to(outside)
    with pytest.raises(ValueError, match="symlink that leads out of the checkpoint folder"):
        lowbit.load(ck, verify=False)


def test_alias_to_nothing_is_refused(ck: Path) -> None:
    meta = _meta(ck)
    meta["aliases"] = {"lm_head.weight": "../model.embed_tokens.weight"}
    _write_meta(ck, meta)
    with pytest.raises(ValueError, match="alias 'lm_head.weight' points to"):
        lowbit.load(ck)


def test_old_checkpoints_load_and_verify_says_hashes_are_absent(ck: Path, capsys) -> None:
    meta = _meta(ck)
    del meta["files"]  # a version 2 checkpoint written before hashes were recorded
    _write_meta(ck, meta)
    lowbit.load(ck)
    for folder in (ck, FIXTURE_V1):
        code, out, _ = run(capsys, "verify", str(folder))
        assert code == 0 and "no file hashes recorded" in out


def test_no_verify_on_every_loading_command(ck: Path, capsys, caplog) -> None:
    from lowbit.cli import build_parser

    parser = build_parser()
    for argv in (["generate", "m", "p"], ["eval", "m"], ["export", "m", "-o", "x"]):
        assert parser.parse_args([*argv, "--no-verify"]).no_verify
    with caplog.at_level(logging.WARNING):
        code, _, _ = run(capsys, "generate", str(ck), "hi", "--max-new-tokens", "1",
                         "--no-verify")
    assert code == 0 and "without verifying" in caplog.text

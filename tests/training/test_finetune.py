"""lowbit.finetune on the tiny Llama: adapters saved by peft load onto the float base (plain peft)
and onto the lowbit base; an interrupted run resumes to the same adapters as an uninterrupted
one; the output folder loads with its adapter applied (what ``lowbit eval`` runs); merging
requantizes; recovery refuses evaluation text; the CLI's finetune then eval."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.nn import QuantLinear

pytest.importorskip("peft")

from peft import PeftModel  # noqa: E402

from lowbit.training import loop  # noqa: E402
from lowbit.training.lora import LoraQuantLinear, attach_lora, load_adapter  # noqa: E402

SCHEME = "int4-asym-g32"


@pytest.fixture
def questions(tmp_path: Path) -> Path:
    rows = [{"question": f"Is {i} even?", "choices": ["yes", "no"], "answer": i % 2}
            for i in range(12)]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _random_adapters(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_adapter_loads_onto_float_and_lowbit_base(tiny_llama, tmp_path: Path) -> None:
    model, _ = tiny_llama
    quant = copy.deepcopy(model)
    lowbit.quantize(quant, SCHEME, progress=False)
    peft_q = attach_lora(quant, r=4)
    assert any(isinstance(m, LoraQuantLinear) for m in peft_q.modules())
    _random_adapters(peft_q)
    peft_q.save_pretrained(str(tmp_path / "ad"))
    x = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        want = peft_q(input_ids=x).logits
    fresh = copy.deepcopy(model)
    lowbit.quantize(fresh, SCHEME, progress=False)
    with torch.no_grad():
        assert torch.equal(load_adapter(fresh, tmp_path / "ad")(input_ids=x).logits, want)
    onto_float = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "ad"))
    saved = {n.replace(".default", ""): p for n, p in peft_q.named_parameters() if "lora_" in n}
    loaded = {n.replace(".default", ""): p for n, p in onto_float.named_parameters()
              if "lora_" in n}
    assert saved.keys() == loaded.keys() and saved
    assert all(torch.equal(saved[n], loaded[n]) for n in saved)


def _run(source: str, data: Path, out: Path, **kw):
    return lowbit.finetune(source, data, out, scheme=SCHEME, lora_r=4, length=32, steps=4,
                           batch_size=3, lr=1e-2, warmup=1, save_every=2, progress=False,
                           dtype=torch.float32, **kw)


def test_resume_gives_the_uninterrupted_adapters(tiny_hf_dir, questions, tmp_path, monkeypatch
                                                 ) -> None:
    whole = _run(str(tiny_hf_dir), questions, tmp_path / "whole")
    real = loop.lm_loss_fn()
    calls = {"n": 0}

    def failing() -> loop.LossFn:
        def fn(model, batch):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("interrupted")
            return real(model, batch)
        return fn

    monkeypatch.setattr(loop, "lm_loss_fn", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        _run(str(tiny_hf_dir), questions, tmp_path / "cut")
    monkeypatch.setattr(loop, "lm_loss_fn", lambda: real)
    resumed = _run(str(tiny_hf_dir), questions, tmp_path / "cut")
    assert resumed.log.resumed_from == 2 and resumed.log.step == 4
    assert resumed.log.losses == pytest.approx(whole.log.losses, rel=1e-5)
    a = {n: p for n, p in whole.model.named_parameters() if p.requires_grad}
    b = {n: p for n, p in resumed.model.named_parameters() if p.requires_grad}
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)
    with pytest.raises(FileExistsError, match="--force"):
        _run(str(tiny_hf_dir), questions, tmp_path / "cut")


def test_output_loads_with_its_adapter_and_merges(tiny_hf_dir, questions, tmp_path) -> None:
    from lowbit.commands.evaluate import default_baseline

    res = _run(str(tiny_hf_dir), questions, tmp_path / "out", merge=True)
    assert res.log.losses[-1] < res.log.losses[0]
    x = torch.randint(0, 256, (1, 11))
    model, tok = lowbit.load_model(str(tmp_path / "out"))
    assert tok is not None and any(isinstance(m, LoraQuantLinear) for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(model(x).logits, res.model(input_ids=x).logits, atol=1e-5)
    assert default_baseline(str(tmp_path / "out")) == str(tiny_hf_dir)
    merged, _ = lowbit.load_model(str(tmp_path / "out" / "merged"))
    layer = next(m for m in res.model.modules() if isinstance(m, LoraQuantLinear))
    name = next(n for n, m in res.model.base_model.model.named_modules() if m is layer)
    # the merged layer is the requantized dequant + B A s (checkpoint stores it as it was made)
    want = lowbit.quantize_tensor(layer.base_layer.weight + layer.get_delta_weight("default"),
                                  SCHEME).dequantize()
    got = merged.get_submodule(name)
    assert isinstance(got, QuantLinear) and torch.equal(got.weight, want)


def test_recover_refuses_evaluation_text_and_questions(tiny_hf_dir, questions, tmp_path) -> None:
    from lowbit.data import EVAL_TEXTS

    with pytest.raises(ValueError, match="evaluation text"):
        lowbit.finetune(str(tiny_hf_dir), EVAL_TEXTS[0], tmp_path / "r", recover=True)
    with pytest.raises(ValueError, match="not questions"):
        lowbit.finetune(str(tiny_hf_dir), questions, tmp_path / "r", recover=True)
    assert not (tmp_path / "r").exists()


def test_recover_lowers_kl_to_the_float_model(tiny_hf_dir, tmp_path) -> None:
    from lowbit.training.losses import kl_loss

    text = tmp_path / "calib.txt"
    text.write_text(" ".join(f"word{i % 37} the tree" for i in range(400)))
    res = lowbit.finetune(str(tiny_hf_dir), text, tmp_path / "rec", scheme="int3-g32",
                          recover=True, lora_r=4, length=48, steps=6, batch_size=4, lr=5e-3,
                          warmup=1, progress=False, dtype=torch.float32, max_examples=4)
    assert res.log.losses[-1] < res.log.losses[0]  # the same 4 windows at every step
    base, _ = lowbit.load_model(str(tiny_hf_dir))
    x = torch.tensor([res.tokenizer.encode(text.read_text()[:48])])
    ones = torch.ones(x.shape)
    with torch.no_grad():
        after = kl_loss(res.model(input_ids=x).logits, base(x).logits, ones)
        with res.model.disable_adapter():
            before = kl_loss(res.model(input_ids=x).logits, base(x).logits, ones)
    assert after < before


def test_cli_finetune_then_eval(tiny_hf_dir, questions, tmp_path, capsys) -> None:
    from lowbit.cli import main

    text = tmp_path / "eval.txt"
    text.write_text(" ".join(f"tree {i}" for i in range(300)))
    out = tmp_path / "cli-out"
    assert main(["finetune", str(tiny_hf_dir), "--scheme", SCHEME, "--data", str(questions),
                 "-o", str(out), "--steps", "2", "--batch-size", "2", "--lora-r", "4",
                 "--length", "32"]) == 0
    assert "lowbit eval" in capsys.readouterr().out
    assert main(["eval", str(out), "--text", str(text), "--choice", str(questions),
                 "--no-speed", "--max-tokens", "200", "--context", "64"]) == 0
    cap = capsys.readouterr()
    assert "KL mean" in cap.out and f"baseline: {tiny_hf_dir}" in cap.out
    # the question file was the training data: eval says its score is not held out
    assert cap.err.count("trained on it") == 1 and "q.jsonl" in cap.err, cap.err


def test_dequant_modes_train_alike_and_count_what_they_hold(tiny_hf_dir, questions, tmp_path
                                                            ) -> None:
    runs = {m: _run(str(tiny_hf_dir), questions, tmp_path / m, dequant=m)
            for m in ("recompute", "step", "all")}
    layers = [m for m in runs["all"].model.modules() if isinstance(m, QuantLinear)]
    floats = sum(m.in_features * m.out_features * 4 for m in layers)
    held = {m: r.record["dequant_bytes"] for m, r in runs.items()}
    # recompute: one layer's float weight at a time; all: every layer's, kept; step: those
    # whose input needs a gradient (the first block's q/k/v see the frozen embedding)
    assert held["recompute"] == max(m.in_features * m.out_features * 4 for m in layers)
    assert held["all"] == floats and held["recompute"] < held["step"] <= floats
    for m in ("step", "all"):  # the same gradients; forwards differ by the packed kernel's
        # rounding (recompute, and step where no gradient is needed, run it; all the reference)
        assert runs[m].log.losses == pytest.approx(runs["recompute"].log.losses, rel=1e-2)
    assert runs["all"].record["layout_bytes"] >= floats  # the cache is a kernel layout
    mem = runs["all"].record["train_memory"]  # training's own peak, loading left out
    assert mem["peak_rss_bytes"] >= mem["rss_before_bytes"] > 0
    with pytest.raises(ValueError, match="--dequant 'fast'"):
        _run(str(tiny_hf_dir), questions, tmp_path / "bad", dequant="fast")


def test_attaching_lora_dequantizes_no_layer(tiny_llama, monkeypatch) -> None:
    from lowbit.core.qtensor import QTensor

    model, _ = tiny_llama
    lowbit.quantize(model, SCHEME, progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("attaching adapters dequantized a layer")

    monkeypatch.setattr(QTensor, "dequantize", refuse)
    peft_model = attach_lora(model, r=4)
    lora = [m for m in peft_model.modules() if isinstance(m, LoraQuantLinear)]
    assert lora and all(m.lora_A["default"].weight.dtype == torch.float32 for m in lora)


def test_the_loss_from_scored_positions_only_equals_the_full_one(tiny_llama) -> None:
    from lowbit.training.examples import IGNORE
    from lowbit.training.losses import causal_lm_loss

    model, _ = tiny_llama
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 250, (3, 20), generator=g)
    labels = torch.full_like(ids, IGNORE)
    labels[0, 5:8], labels[1, 12:20], labels[2, 19] = ids[0, 5:8], ids[1, 12:20], ids[2, 19]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    full = causal_lm_loss(model(input_ids=ids).logits, labels)
    assert loop.takes_logits_to_keep(model)
    assert torch.allclose(loop.lm_loss_fn()(model, batch), full, rtol=1e-6)

    class NoKeep(torch.nn.Module):  # a forward without logits_to_keep: the full logits
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    assert not loop.takes_logits_to_keep(NoKeep())
    assert torch.allclose(loop.lm_loss_fn()(NoKeep(), batch), full, rtol=1e-6)


def test_gradient_checkpointing_trains_alike(tiny_hf_dir, questions, tmp_path) -> None:
    plain = _run(str(tiny_hf_dir), questions, tmp_path / "plain")
    ckpt = _run(str(tiny_hf_dir), questions, tmp_path / "ckpt", gradient_checkpointing=True)
    assert ckpt.record["gradient_checkpointing"] and not plain.record["gradient_checkpointing"]
    assert ckpt.log.losses == pytest.approx(plain.log.losses, rel=1e-5)
    from lowbit.training.api import enable_checkpointing

    with pytest.raises(ValueError, match="no-such-model does not support"):
        enable_checkpointing(torch.nn.Linear(2, 2), "no-such-model")


def test_cli_memory_options_in_a_fresh_process(tiny_hf_dir, questions, tmp_path) -> None:
    # --trim-heap changes malloc for the whole process: not in the test runner's
    import os
    import subprocess
    import sys

    out = tmp_path / "lean"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["src", os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "lowbit.cli", "finetune", str(tiny_hf_dir), "--scheme",
                    "nf4-g64-dq", "--data", str(questions), "-o", str(out), "--steps", "2",
                    "--batch-size", "2", "--lora-r", "4", "--length", "32",
                    "--gradient-checkpointing", "--trim-heap"], env=env, check=True,
                   capture_output=True)
    record = json.loads((out / "finetune.json").read_text())
    assert record["trim_heap"] and record["gradient_checkpointing"] and record["steps"] == 2
    assert record["layout_bytes"] == 0  # recompute: no kernel layout kept beside the codes

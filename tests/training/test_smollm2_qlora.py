"""A short real QLoRA fine-tune: SmolLM2-135M quantized to int4-asym-g64, peft LoRA r=8 on every
Linear but the head, three steps on the same two questions: the loss goes down."""

from __future__ import annotations

import copy

import pytest
import torch

import lowbit

pytest.importorskip("peft")


@pytest.mark.slow
def test_qlora_on_smollm2_lowers_the_loss(smollm2) -> None:
    from lowbit.data import load_questions
    from lowbit.nn import QuantLinear
    from lowbit.training import loop
    from lowbit.training.examples import question_examples
    from lowbit.training.lora import LoraQuantLinear, attach_lora

    model, tok = smollm2
    model = copy.deepcopy(model)  # the fixture is shared
    lowbit.quantize(model, "int4-asym-g64", progress=False)
    torch.manual_seed(0)
    peft_model = attach_lora(model, r=8)
    assert sum(isinstance(m, LoraQuantLinear) for m in peft_model.modules()) == 7 * 30
    assert not any(p.requires_grad for m in peft_model.modules() if isinstance(m, QuantLinear)
                   for p in m.parameters())
    examples = question_examples(tok, load_questions("general_knowledge.jsonl")[:2], 64)
    settings = loop.TrainSettings(steps=3, batch_size=2, lr=2e-3, warmup=1, save_every=10)
    log = loop.train(peft_model, examples, loop.lm_loss_fn(), settings, progress=False,
                     pad_id=int(tok.eos_token_id))
    assert log.losses[-1] < log.losses[0], log.losses
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    # Adam's two float32 moments per parameter, plus torch's float32 step counter per tensor
    assert log.optimizer_bytes == 8 * sum(p.numel() for p in trainable) + 4 * len(trainable)

"""``lowbit finetune``: LoRA / QLoRA on a text or question file, or ``--recover`` toward the float
model on calibration text; the output folder is what ``lowbit eval`` measures."""

from __future__ import annotations

import argparse


def cmd_finetune(args: argparse.Namespace) -> int:
    from lowbit.storage.checkpoint import parse_dtype
    from lowbit.training.api import finetune

    res = finetune(args.model, args.data, args.output, scheme=args.scheme, lora_r=args.lora_r,
                   lora_alpha=args.lora_alpha, length=args.length, recover=args.recover,
                   merge=args.merge, held_out=args.held_out, max_examples=args.max_examples,
                   force=args.force, dtype=parse_dtype(args.dtype), steps=args.steps,
                   batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                   optimizer=args.optimizer, save_every=args.save_every, dequant=args.dequant,
                   gradient_checkpointing=args.gradient_checkpointing, trim_heap=args.trim_heap)
    log = res.log
    first, last = log.losses[0], log.losses[-1]
    print(f"model            {args.model}" + (f" quantized as {args.scheme}" if args.scheme
                                              else ""))
    resumed = f"resumed at {log.resumed_from}, " if log.resumed_from else ""
    print(f"trained          {log.step} steps ({resumed}{res.record['examples']} examples), "
          f"loss {first:.4f} -> {last:.4f}")
    print(f"adapters         {res.trainable_params / 1e6:.2f} M parameters, optimizer state "
          f"{log.optimizer_bytes / 1e6:.1f} MB ({args.optimizer})")
    if res.record["dequant_bytes"]:
        print(f"dequantized      {res.record['dequant_bytes'] / 1e6:.1f} MB of float weights held "
              f"at the peak (--dequant {args.dequant})")
    print(f"time             {res.seconds:.1f} s")
    print(f"output           {res.folder} (lowbit eval {res.folder})")
    if args.merge:
        print(f"merged           {res.folder / 'merged'} (adapters requantized into the base)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from lowbit.nn_grad import DEQUANT_MODES
    from lowbit.training.loop import OPTIMIZERS, TrainSettings

    d = TrainSettings()
    p = sub.add_parser("finetune", help="LoRA/QLoRA adapters (peft) on a float or quantized base,"
                                        " or --recover what quantization lost")
    p.add_argument("model", help="lowbit checkpoint, Hugging Face folder, .gguf or built-in name")
    p.add_argument("--scheme", help="quantize the base with this scheme first (QLoRA); without "
                                    "it a float model trains in --dtype (LoRA)")
    p.add_argument("--data", nargs="+", metavar="FILE",
                   help="text file(s) (causal-LM loss on every token) or question .jsonl "
                        "(loss on the right answer after the prompt); with --recover default "
                        "the calibration texts")
    p.add_argument("-o", "--output", required=True, help="output folder (rerun to resume)")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--lora-alpha", type=float, help="LoRA alpha (default 2 x rank)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"examples per step (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr})")
    p.add_argument("--length", type=int, default=256, help="tokens per example (default 256)")
    p.add_argument("--seed", type=int, default=d.seed, help="data order and split seed")
    p.add_argument("--held-out", type=float, default=0.0, metavar="SHARE",
                   help="share of a question file kept out of training (seeded split)")
    p.add_argument("--max-examples", type=int, help="use at most this many examples")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                   help="torch AdamW, or bitsandbytes' 8-bit AdamW states (default adamw)")
    p.add_argument("--save-every", type=int, default=d.save_every,
                   help=f"save the training state every N steps (default {d.save_every})")
    p.add_argument("--dequant", choices=DEQUANT_MODES, default="recompute",
                   help="a quantized layer's weight for the backward pass: dequantized again "
                        "(recompute, least memory; default), kept from the forward for the step "
                        "(step), or kept for the whole run (all: float-sized, fastest)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="keep only each block's input for the backward pass and recompute the "
                        "rest: less activation memory, about a third slower")
    p.add_argument("--trim-heap", action="store_true",
                   help="give freed memory back to the system at once (glibc): a lower peak "
                        "RSS, slower steps")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                   help="dtype of the base's float tensors and activations (default bfloat16)")
    p.add_argument("--recover", action="store_true",
                   help="train toward the float model's next-token distribution (KL) on "
                        "calibration text instead of labels")
    p.add_argument("--merge", action="store_true",
                   help="also write OUT/merged: the adapters requantized into the base")
    p.add_argument("--force", action="store_true", help="replace a finished output")
    p.set_defaults(handler=cmd_finetune)

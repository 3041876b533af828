"""``lowbit export``: write a checkpoint or a float model as a file another runtime reads."""

from __future__ import annotations

import argparse

TARGETS = ("gguf", "onnx", "compressed-tensors", "bnb")


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from lowbit.export.onnx import to_onnx

    if args.type or args.imatrix:
        raise SystemExit("lowbit export --to onnx: --type and --imatrix are GGUF options")
    report = to_onnx(args.source, args.output, requantize=args.requantize, force=args.force,
                     progress=True, verify=not args.no_verify)
    ops = ", ".join(f"{n} {op}" for op, n in report.op_counts().items()) or "none (float)"
    print(f"source           {report.source} ({report.arch})")
    print(f"quantized        {len(report.layers)} Linears: {ops}")
    if report.requantized:
        print(f"requantized      {len(report.requantized)} Linears (--requantize)")
    else:
        print("lossless         every quantized Linear written from its codes")
    print(f"folder           {report.path} ({report.file_bytes / 1e6:.1f} MB)")
    print(f"time             {report.seconds:.1f} s")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.list:
        return _list(args)
    if args.source is None or args.output is None:
        raise SystemExit("lowbit export: give SOURCE and -o/--output (or --list)")
    if args.to == "onnx":
        return cmd_export_onnx(args)
    if args.to != "gguf":
        return _export_folder(args)
    from lowbit.export import to_gguf

    report = to_gguf(args.source, args.output, qtype=args.type, requantize=args.requantize,
                     force=args.force, progress=True, verify=not args.no_verify,
                     imatrix=args.imatrix)
    counts = ", ".join(f"{n} {t}" for t, n in report.type_counts().items())
    print(f"source           {report.source} ({report.arch})")
    print(f"type             {report.preset or 'as stored (lossless)'}")
    print(f"metadata         {report.metadata}")
    if args.imatrix:
        print(f"imatrix          {args.imatrix}")
    print(f"tensors          {len(report.tensor_types)}: {counts}")
    if report.lossless:
        print(f"lossless         {len(report.lossless)} quantized layers written from their "
              "codes, not requantized")
    print(f"file             {report.path} ({report.file_bytes / 1e6:.1f} MB, "
          f"{report.bits_per_weight:.3f} bits per weight)")
    print(f"time             {report.seconds:.1f} s")
    return 0


def _export_folder(args: argparse.Namespace) -> int:
    """compressed-tensors or bitsandbytes: a Hugging Face folder."""
    if args.type or args.imatrix:
        raise SystemExit(f"lowbit export: --type and --imatrix are GGUF options, not for "
                         f"--to {args.to}")
    if args.to == "bnb":
        from lowbit.export.bnb import to_bnb_folder as write
    else:
        from lowbit.export.compressed_tensors import to_compressed_tensors as write
    report = write(args.source, args.output, requantize=args.requantize, force=args.force,
                   progress=True, verify=not args.no_verify)
    print(f"source           {report.source}")
    print(f"target           {report.target}: "
          + ", ".join(f"{n} layers {f}" for f, n in report.formats.items()))
    print(f"lossless         {len(report.lossless)} quantized layers written from their codes")
    if report.requantized:
        kinds = sorted(set(report.requantized.values()))
        print(f"requantized      {len(report.requantized)} layers, to {', '.join(kinds)}")
    print(f"folder           {report.path} ({report.file_bytes / 1e6:.1f} MB)")
    print(f"time             {report.seconds:.1f} s")
    return 0


def _list(args: argparse.Namespace) -> int:
    """The target x scheme table, or one target's reasons when --to is given explicitly."""
    from lowbit.export import rules

    if args.to_given:
        print("\n".join(rules.explain(args.to)))
    else:
        print(rules.markdown_table())
    return 0


class _To(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        namespace.to = values
        namespace.to_given = True


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from lowbit.export.gguf_types import PRESETS

    p = sub.add_parser("export", help="export a checkpoint or model to GGUF (llama.cpp, Ollama), "
                                      "ONNX (ONNX Runtime), compressed-tensors (transformers, "
                                      "vLLM) or bitsandbytes")
    p.add_argument("source", nargs="?", help="lowbit checkpoint folder, Hugging Face folder, "
                                            ".gguf file or built-in name")
    p.add_argument("--to", default="gguf", choices=TARGETS, action=_To,
                   help="file format (default gguf); onnx writes a folder that ONNX Runtime and "
                        "onnxruntime-genai run; compressed-tensors and bnb write a Hugging Face "
                        "folder from a lowbit checkpoint")
    p.add_argument("-o", "--output", help="file (GGUF) or folder (the others) to write")
    p.add_argument("--list", action="store_true",
                   help="print which schemes each target holds (lossless / requantize / "
                        "refused); with --to, that target's reasons")
    p.add_argument("--type", default=None, metavar="T",
                   help=f"GGUF type or llama.cpp mix: {', '.join(PRESETS)}. Needed for a float "
                        "model; for a checkpoint it sets the type of its float tensors")
    p.add_argument("--requantize", action="store_true",
                   help="requantize layers the target cannot hold as stored (GGUF: needs "
                        "--type; ONNX: to an int4/int8 scheme with integer zero points; others: "
                        "the nearest scheme they hold)")
    p.add_argument("--imatrix", metavar="FILE",
                   help="importance matrix (llama-imatrix or `lowbit imatrix`, GGUF or .dat): "
                        "quantize each tensor with it, as llama-quantize --imatrix")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.add_argument("--no-verify", action="store_true",
                   help="load a checkpoint without checking its file hashes")
    p.set_defaults(handler=cmd_export, to_given=False)

"""``lowbit imatrix``: measure llama.cpp's importance matrix of a model on calibration text, and
write it as llama-imatrix does (GGUF by default, or the legacy .dat)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def cmd_imatrix(args: argparse.Namespace) -> int:
    from lowbit.calibration import Calibration
    from lowbit.data import DEFAULT_CALIBRATION_TEXT
    from lowbit.export.imatrix import measure_imatrix
    from lowbit.ggml.imatrix import write_imatrix
    from lowbit.models import load_model
    from lowbit.storage.atomic import check_output_path

    out = check_output_path(Path(args.output))
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give the path of the imatrix file to write")
    texts = args.calib or [DEFAULT_CALIBRATION_TEXT]
    t0 = time.perf_counter()
    model, tokenizer = load_model(args.model)
    if tokenizer is None:
        raise ValueError(f"{args.model} has no tokenizer to tokenize the calibration text")
    calibration = Calibration.from_texts(tokenizer, texts, tokens=args.calib_tokens,
                                         length=args.calib_length, batch_size=args.batch)
    imatrix = measure_imatrix(model, calibration, datasets=[str(t) for t in texts],
                              process_output=args.process_output)
    path = write_imatrix(out, imatrix, format=args.format)
    windows, length = calibration.tokens.shape
    print(f"model            {args.model}")
    print(f"calibration      {calibration.source}")
    print(f"entries          {len(imatrix)} weight tensors, {windows} chunks of {length} tokens")
    print(f"file             {path} ({args.format or 'by suffix'}, "
          f"{path.stat().st_size / 1e6:.2f} MB)")
    print(f"time             {time.perf_counter() - t0:.1f} s")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from lowbit.calibration.windows import DEFAULT_BATCH, DEFAULT_LENGTH, DEFAULT_TOKENS
    from lowbit.data import DEFAULT_CALIBRATION_TEXT
    from lowbit.ggml.imatrix import FORMATS

    p = sub.add_parser("imatrix", help="measure llama.cpp's importance matrix (llama-imatrix) "
                                       "for `export --to gguf --imatrix`")
    p.add_argument("model", help="Hugging Face folder, .gguf file or built-in name")
    p.add_argument("--calib", nargs="+", metavar="TEXT",
                   help=f"calibration text file(s): names under the data folder's text/ or "
                        f"paths (default {DEFAULT_CALIBRATION_TEXT})")
    p.add_argument("--calib-tokens", type=int, default=DEFAULT_TOKENS, metavar="N",
                   help=f"total calibration tokens, shared among the texts (default "
                        f"{DEFAULT_TOKENS})")
    p.add_argument("--calib-length", type=int, default=DEFAULT_LENGTH, metavar="TOKENS",
                   help=f"tokens per window, llama-imatrix's chunk (-c) (default "
                        f"{DEFAULT_LENGTH})")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="N",
                   help=f"windows run through the model at once (default {DEFAULT_BATCH})")
    p.add_argument("-o", "--output", required=True, help="imatrix file to write")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="gguf (llama-imatrix's default) or dat (legacy); default: dat for a "
                        ".dat path, else gguf")
    p.add_argument("--process-output", action="store_true",
                   help="also record the output head (as llama-imatrix --process-output; a head "
                        "tied to the embeddings is never recorded)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(handler=cmd_imatrix)

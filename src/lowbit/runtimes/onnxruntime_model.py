"""`OrtDecoder`: an ONNX decoder folder (onnxruntime-genai's layout: ``genai_config.json`` +
``model.onnx``) run by an ``onnxruntime.InferenceSession`` on the CPU, as a torch module whose
forward returns ONNX Runtime's logits, so lowbit's perplexity and KL score ORT's numbers on the
same windows as any other model. ``generate`` decodes greedily through the KV cache
(``past_key_values.*`` in, ``present.*`` out).

Why a session and not weights read back into a torch model: an ONNX folder from another tool
(ORT's own quantizer, the genai builder at int4) is measured as ORT runs it, kernels included,
whatever graph it holds; reading MatMulNBits back would measure lowbit's arithmetic instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

EXACT_QDQ = "session.qdq_matmulnbits_accuracy_level"
CACHE_ROOM = 1024  # positions a cache started by ``forward(use_cache=True)`` has room for


def is_onnx_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding ``genai_config.json`` and its ONNX decoder."""
    p = Path(path)
    return p.is_dir() and (p / "genai_config.json").is_file() and any(p.glob("*.onnx"))


class OrtDecoder(torch.nn.Module):
    """``model(ids[1, n]) -> logits[1, n, V]`` computed by ONNX Runtime; see the module."""

    def __init__(self, folder: str | os.PathLike, *, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        self.folder = Path(folder)
        try:
            cfg = json.loads((self.folder / "genai_config.json").read_text())["model"]
            dec = cfg["decoder"]
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{self.folder}: not an onnxruntime-genai model folder "
                             f"(genai_config.json: {err})") from None
        opts = ort.SessionOptions()
        # ORT fuses DequantizeLinear + MatMul into MatMulNBits at load, by default with int8
        # activations (accuracy level 4); level 0 keeps the weights' own fp32 arithmetic
        opts.add_session_config_entry(EXACT_QDQ, "0")
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.folder / dec["filename"]), opts,
                                            providers=["CPUExecutionProvider"])
        self.head_size = int(dec["head_size"])
        self.window = int((dec.get("sliding_window") or {}).get("window_size") or 0)
        self.vocab_size = int(cfg["vocab_size"])
        self.eos = cfg.get("eos_token_id")
        self.past = [(i.name, i.shape[1]) for i in self.session.get_inputs()
                     if i.name.startswith("past_key_values")]
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.config = SimpleNamespace(vocab_size=self.vocab_size, onnx_folder=str(self.folder))
        self.eval()

    def _empty_cache(self, capacity: int) -> dict[str, np.ndarray]:
        """Zeroed past key/value buffers of ``capacity`` positions (a sliding-window model
        needs at least its window)."""
        cap = max(capacity, self.window)
        return {n: np.zeros((1, int(h), cap, self.head_size), np.float32) for n, h in self.past}

    def step(self, ids: np.ndarray, past: dict[str, np.ndarray], total: int
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Run ``ids`` [1, n] after ``total - n`` cached positions: (logits, next cache)."""
        feeds = {"input_ids": ids.astype(np.int64),
                 "attention_mask": np.ones((1, total), np.int64), **past}
        if "position_ids" in self.input_names:
            feeds["position_ids"] = np.arange(total - ids.shape[1], total, dtype=np.int64)[None]
        names = ["logits"] + [n.replace("past_key_values", "present") for n, _ in self.past]
        out = self.session.run(names, feeds)
        return out[0], {n: v for (n, _), v in zip(self.past, out[1:])}

    def forward(self, input_ids: torch.Tensor, *, use_cache: bool = False,
                past_key_values: tuple[dict[str, np.ndarray], int] | None = None) -> Any:
        """Logits [1, n, V]; with ``use_cache`` (as a transformers model is called, e.g. by
        :func:`lowbit.eval.speed.measure_speed`) an object with ``logits`` and
        ``past_key_values`` (the cache buffers and the positions they hold)."""
        if input_ids.ndim != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"OrtDecoder takes one sequence [1, n], got "
                             f"{tuple(input_ids.shape)}")
        n = input_ids.shape[1]
        past, held = past_key_values or (self._empty_cache(n + CACHE_ROOM if use_cache else n), 0)
        if held + n > next(iter(past.values())).shape[2] if past else False:
            raise ValueError(f"OrtDecoder: the KV cache holds {CACHE_ROOM} new positions")
        logits, past = self.step(input_ids.cpu().numpy(), past, held + n)
        logits = torch.from_numpy(logits)
        if not use_cache:
            return logits
        return SimpleNamespace(logits=logits, past_key_values=(past, held + n))

    def generate(self, ids: list[int], max_new_tokens: int, *, stop_at_eos: bool = False
                 ) -> list[int]:
        """Greedy decoding through the KV cache: the ``max_new_tokens`` ids after ``ids``."""
        total = len(ids)
        past = self._empty_cache(total + max_new_tokens)
        logits, past = self.step(np.asarray([ids]), past, total)
        out: list[int] = []
        for _ in range(max_new_tokens):
            nxt = int(np.argmax(logits[0, -1]))
            out.append(nxt)
            if stop_at_eos and nxt == self.eos or len(out) == max_new_tokens:
                break
            total += 1
            logits, past = self.step(np.asarray([[nxt]]), past, total)
        return out


def load_onnx_model(folder: str | os.PathLike, **kwargs: Any) -> tuple[OrtDecoder, Any]:
    """(OrtDecoder, the folder's tokenizer) for an ONNX model folder."""
    from transformers import AutoTokenizer

    return OrtDecoder(folder, **kwargs), AutoTokenizer.from_pretrained(str(folder))

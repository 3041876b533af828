"""Score one quantized model the same way for every tool: lowbit's evaluator on fixed windows.

The base model's logits are computed once per model and cached (``LogitsCache``); each row then
runs only its own model. Weight error is the relative L2 error of every decoder Linear weight
against the float model's, and lowbit's artifact rule (``lowbit.eval.artifact``) marks a row
whose tensors came back on the baseline's own grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

EVAL_TEXT = "moby-dick-ch061-100.txt"  # evaluation only; calibration uses chapters 1-60
CONTEXT = 512
EVAL_WINDOWS = 8


@dataclass
class Evaluator:
    """The evaluation windows and cached base logits of one model."""

    name: str
    base: torch.nn.Module
    tokenizer: object
    windows: object
    cache: object

    @classmethod
    def for_model(cls, name: str, work: Path, eval_windows: int = EVAL_WINDOWS) -> Evaluator:
        import lowbit
        from lowbit.data import read_text
        from lowbit.eval import make_windows
        from lowbit.eval.divergence import LogitsCache, save_base_logits

        base, tok = lowbit.load_model(name)
        windows = make_windows(tok, read_text(EVAL_TEXT), CONTEXT,
                               max_tokens=eval_windows * CONTEXT)
        folder = work / name / f"base-logits-{eval_windows}x{CONTEXT}"
        try:
            cache = LogitsCache(folder, windows)
        except ValueError:
            cache = save_base_logits(base, windows, folder, progress=False)
        return cls(name, base, tok, windows, cache)

    def score(self, model: torch.nn.Module) -> dict:
        """Perplexity, KL mean / p99, top-1 agreement, weight error and artifact note."""
        from lowbit.eval import divergence

        d = divergence(self.cache, model, self.windows, progress=False)
        out = {"ppl": d.ppl_quant, "ppl_base": d.ppl_base, "kl_mean": d.kld_mean,
               "kl_stderr": d.kld_stderr, "kl_p99": d.kld_p99, "top1": d.top1_agreement,
               "n_scored": d.n_scored}
        out.update(self.weight_error(model))
        return out

    def weight_error(self, model: torch.nn.Module) -> dict:
        """Global relative L2 error over the decoder Linears, and the artifact note."""
        from lowbit.eval.artifact import note, on_grid_tensors

        base = dict(decoder_linear_weights(self.base))
        errors, num, den = {}, 0.0, 0.0
        for name, w in decoder_linear_weights(model):
            ref = base[name].double()
            diff = float((w.double() - ref).square().sum())
            norm = float(ref.square().sum())
            errors[name] = math.sqrt(diff / norm) if norm else None
            num, den = num + diff, den + norm
        return {"weight_rel_l2": math.sqrt(num / den) if den else None,
                "n_linear": len(errors),
                "artifact": note(len(on_grid_tensors(errors)), len(errors))}


def decoder_linear_weights(model: torch.nn.Module):
    """(name, float weight) of every Linear-like module inside the decoder blocks."""
    for name, module in model.named_modules():
        if ".layers." not in f".{name}" or not name.rsplit(".", 1)[-1].endswith("proj"):
            continue
        w = module.weight
        yield name, (w() if callable(w) else w).detach().float()


def linear_bits_of_model(model: torch.nn.Module) -> float | None:
    """Bits per weight of a lowbit-quantized model's QuantLinear layers (bytes as stored)."""
    from lowbit.nn import quantized_layers

    layers = quantized_layers(model)
    if not layers:
        return None
    bits = sum(q.qweight.nbytes * 8 for q in layers.values())
    return bits / sum(q.qweight.numel for q in layers.values())


def load_replaced(name: str, weights: Path) -> torch.nn.Module:
    """The float model with the tensors of a peer's safetensors file put in place."""
    from safetensors.torch import load_file

    import lowbit

    model, _ = lowbit.load_model(name)
    state = load_file(str(weights))
    missing = set(state) - set(model.state_dict())
    if missing:
        raise KeyError(f"{weights}: tensors not in the model: {sorted(missing)[:5]}")
    model.load_state_dict(state, strict=False)
    return model

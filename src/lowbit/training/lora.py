"""peft's LoRA on lowbit's quantized layers: a peft ``lora.Linear`` over a QuantLinear.

peft finds the layer through its custom-module mapping (``LoraConfig._register_custom_module``),
so users keep peft's ``get_peft_model``, ``PeftModel.from_pretrained``, ``save_pretrained`` and
adapter files: the adapter's module names are the float model's, so one adapter file loads onto
the float base (plain peft) and onto any lowbit base (:func:`load_adapter`). Merging requantizes:
``W' = quantize(dequantize(W) + B A s)`` under the layer's own scheme, by round-to-nearest.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from lowbit.nn import QuantLinear

try:
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.tuners.lora.layer import Linear as _PeftLoraLinear
except ImportError as err:  # pragma: no cover - peft is in lowbit's `train` extra
    raise ModuleNotFoundError("lowbit's fine-tuning needs peft: pip install 'lowbit[train]'"
                              ) from err

DEFAULT_SKIP = ("lm_head",)


class LoraQuantLinear(_PeftLoraLinear):
    """peft's LoRA Linear whose base layer is a QuantLinear (frozen, any lowbit scheme)."""

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features

    def _get_base_layer_device_and_dtype(self, base_layer: nn.Module
                                         ) -> tuple[torch.device | None, torch.dtype | None]:
        """The packed weight's device and no dtype (the adapters keep theirs): peft's default
        reads ``base_layer.weight``, which for a QuantLinear dequantizes the whole layer (and
        the freed float weights can stay resident in the process's heap)."""
        if isinstance(base_layer, QuantLinear):
            return base_layer.codes.device, None
        return super()._get_base_layer_device_and_dtype(base_layer)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the adapters' ``B A s`` to the dequantized weight and requantize it (rtn)."""
        from peft.tuners.tuners_utils import check_adapters_to_merge

        from lowbit import quantize_tensor

        names = [a for a in check_adapters_to_merge(self, adapter_names) if a in self.lora_A]
        if not names:
            return
        base: QuantLinear = self.get_base_layer()
        w = base.qweight.dequantize(dtype=torch.float32)
        for name in names:
            if name in self.lora_variant or self.lora_bias[name]:
                raise ValueError(f"adapter {name!r}: only plain LoRA merges into a quantized layer")
            w = w + self.get_delta_weight(name).float()
        if safe_merge and not torch.isfinite(w).all():
            raise ValueError(f"merging {names} into {base.scheme} gives non-finite weights")
        qt = quantize_tensor(w, base.scheme)
        merged = QuantLinear(qt, base.bias, method="rtn").to(base.codes.device)
        merged.kernel_choice = base.kernel_choice
        self.base_layer = merged
        self.merged_adapters.extend(names)

    def unmerge(self) -> None:
        raise ValueError("a merge into a quantized layer requantized its weight; it cannot be "
                         "undone exactly (reload the base and the adapter instead)")


def register(config: LoraConfig) -> LoraConfig:
    """``config`` with LoraQuantLinear registered for QuantLinear (peft's custom modules)."""
    config._register_custom_module({QuantLinear: LoraQuantLinear})
    return config


def default_targets(model: nn.Module, skip: tuple[str, ...] = DEFAULT_SKIP) -> list[str]:
    """The last name parts of every Linear and QuantLinear (``q_proj``, ..., ``down_proj``),
    the output head left out: QLoRA's "all linear layers"."""
    names = {n.rpartition(".")[2] for n, m in model.named_modules()
             if isinstance(m, (nn.Linear, QuantLinear))}
    return sorted(names - set(skip))


def lora_config(model: nn.Module, *, r: int = 16, alpha: float | None = None,
                dropout: float = 0.0, targets: list[str] | None = None) -> LoraConfig:
    """A causal-LM LoraConfig over ``targets`` (default :func:`default_targets`), alpha = 2r."""
    if r < 1:
        raise ValueError(f"--lora-r must be at least 1, got {r}")
    cfg = LoraConfig(r=r, lora_alpha=2 * r if alpha is None else alpha, lora_dropout=dropout,
                     target_modules=targets or default_targets(model), task_type="CAUSAL_LM")
    return register(cfg)


def attach_lora(model: nn.Module, config: LoraConfig | None = None, **kwargs: Any) -> PeftModel:
    """``peft.get_peft_model`` on a float or lowbit model (the base frozen, adapters trainable);
    ``kwargs`` go to :func:`lora_config` when no ``config`` is given."""
    cfg = register(config) if config is not None else lora_config(model, **kwargs)
    return get_peft_model(model, cfg)


def load_adapter(model: nn.Module, folder: str | os.PathLike, *,
                 is_trainable: bool = False) -> PeftModel:
    """``PeftModel.from_pretrained`` of an adapter folder onto a float or lowbit ``model``."""
    from pathlib import Path

    if not (Path(folder) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder}: no adapter_config.json (not a peft adapter folder)")
    cfg = register(LoraConfig.from_pretrained(str(folder)))
    cfg.inference_mode = not is_trainable
    return PeftModel.from_pretrained(model, str(folder), config=cfg, is_trainable=is_trainable)


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters that require a gradient."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

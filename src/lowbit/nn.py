"""QuantLinear: a drop-in ``nn.Linear`` whose weight is a packed QTensor.

The forward pass runs a kernel (``lowbit.kernels``) chosen per call by the scheme, the input's
device and dtype, and the layer's :class:`~lowbit.kernels.KernelChoice`; the reference kernel
dequantizes the weight to the input's dtype and multiplies. The packed tensors are persistent
buffers (the checkpoint's storage layout); a kernel's runtime layout (e.g. a cached dequantized
weight) lives in non-persistent buffers, so ``state_dict()`` never changes. Moving the layer
(``.to()``, ``.cuda()``, ``.half()``) moves the packed tensors without changing their dtypes,
converts the bias, and drops the runtime layout, which the next call rebuilds.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme
from lowbit.kernels import registry
from lowbit.kernels.choice import KernelChoice
from lowbit.kernels.registry import Kernel

if TYPE_CHECKING:
    from lowbit.calibration.stats import LayerStats

_LAYOUT_PREFIX = "_layout_"
# integer dtypes of each width: floating packed tensors are moved as these, so that a dtype
# conversion (``.half()``) leaves them bit for bit as stored
_SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class QuantLinear(nn.Module):
    """``y = x @ W^T + b`` with ``W`` stored as a QTensor (its pieces are this module's buffers)."""

    def __init__(self, qweight: QTensor, bias: torch.Tensor | None = None, *,
                 method: str | None = None) -> None:
        super().__init__()
        self.method = method  # the registered method that chose the codes, when known
        self.in_features = qweight.shape[1]
        self.out_features = qweight.shape[0]
        self.scheme: Scheme = qweight.scheme
        self._parts = tuple(qweight.tensors())
        for name, tensor in qweight.tensors().items():
            self.register_buffer(name, tensor)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None \
            else None
        self._qt: QTensor | None = None
        self._choice = KernelChoice()
        self._dispatch: dict[tuple[str, torch.dtype], tuple[Kernel, dict[str, Any], str, int]] = {}
        self._layout_key: tuple[Any, ...] | None = None
        self._layout: dict[str, torch.Tensor] = {}
        self.kernels_ran: set[str] = set()
        self.grad_dequant = "recompute"  # where a backward pass gets W: lowbit.nn_grad

    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme: Scheme | str, *, name: str = "weight",
                    method: str = "rtn", stats: LayerStats | None = None) -> QuantLinear:
        """Quantize ``linear``'s weight with a registered ``method`` (round-to-nearest by
        default; a data-aware method needs the layer's calibration ``stats``, a
        :class:`lowbit.calibration.LayerStats`)."""
        from lowbit.methods.registry import get_method

        qt = get_method(method).quantize_weight(linear.weight.detach(), scheme, stats, name=name)
        return cls(qt, linear.bias, method=get_method(method).name)

    @property
    def qweight(self) -> QTensor:
        """The weight as a QTensor sharing this module's buffers (built once, kept until the
        buffers are replaced)."""
        if self._qt is None:
            self._qt = QTensor(scheme=self.scheme, shape=(self.out_features, self.in_features),
                               **{n: self._buffers[n] for n in self._parts})
        return self._qt

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (a new tensor each time; for inspection, not for training)."""
        return self.qweight.dequantize()

    # --- kernels -------------------------------------------------------------------------
    @property
    def kernel_choice(self) -> KernelChoice:
        """Which kernel this layer runs and with which options (see ``lowbit.kernels``)."""
        return self._choice

    @kernel_choice.setter
    def kernel_choice(self, choice: KernelChoice) -> None:
        if not isinstance(choice, KernelChoice):
            raise TypeError(f"kernel_choice takes a KernelChoice, got {type(choice).__name__}")
        if choice != self._choice:
            self._drop_layout()  # frees e.g. a cached weight as soon as it is no longer wanted
            self._choice = choice
            self._dispatch.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(f"QuantLinear takes floating-point input, got {x.dtype}")
        if torch.is_grad_enabled() and x.requires_grad:
            from lowbit.nn_grad import trainable_forward

            return trainable_forward(self, x)  # the weight frozen; see lowbit.nn_grad
        return self.run_kernel(x, None if self.bias is None else self.bias.to(x.dtype))

    def run_kernel(self, x: torch.Tensor, bias: torch.Tensor | None, *,
                   keep_layout: bool = True) -> torch.Tensor:
        """``x @ W^T + bias`` by the kernel chosen for ``x``'s device and dtype (no autograd).
        ``keep_layout=False``: a layout this call builds is dropped after it (training's
        ``recompute`` mode keeps nothing but the packed weight)."""
        kernel, options, label = self._kernel_for(x.device.type, x.dtype)
        layout = self._runtime_layout(kernel, options, x.dtype, keep_layout) \
            if kernel.prepare else {}
        self.kernels_ran.add(label)
        return kernel.linear(x, self.qweight, bias, layout, options)

    def input_grad(self, grad_out: torch.Tensor) -> torch.Tensor | None:
        """A backward pass's ``grad_out @ W`` by the kernel's own ``grad_input`` (its layout
        built for this call only, unless already kept), in ``grad_out``'s dtype; None when the
        kernel chosen for ``grad_out``'s device and dtype has none."""
        kernel, options, _ = self._kernel_for(grad_out.device.type, grad_out.dtype)
        if kernel.grad_input is None or kernel.prepare is None:
            return None
        layout = self._runtime_layout(kernel, options, grad_out.dtype, keep=False)
        return kernel.grad_input(grad_out, self.qweight, layout).to(grad_out.dtype)

    def _kernel_for(self, device_type: str, dtype: torch.dtype
                    ) -> tuple[Kernel, dict[str, Any], str]:
        entry = self._dispatch.get((device_type, dtype))
        if entry is None or entry[3] != registry.version():
            entry = self._resolve(device_type, dtype)
        return entry[:3]

    def _resolve(self, device_type: str, dtype: torch.dtype
                 ) -> tuple[Kernel, dict[str, Any], str, int]:
        """Pick the kernel for calls on ``device_type`` with ``dtype`` and remember it."""
        pinned = self._choice.kernel
        shape = (self.out_features, self.in_features)
        kernel = registry.select(self.scheme, shape, device_type, dtype, pinned=pinned,
                                 permuted="perm" in self._parts)
        if pinned is not None and kernel.name != pinned:
            warnings.warn(f"kernel {pinned!r} cannot run {self.scheme} {shape} on {device_type} "
                          f"with {dtype} activations; running {kernel.name!r} instead",
                          stacklevel=3)
        options = kernel.resolve_options(self._choice.options_for(kernel.name))
        entry = (kernel, options, kernel.label(options), registry.version())
        self._dispatch[(device_type, dtype)] = entry
        return entry

    def _runtime_layout(self, kernel: Kernel, options: Mapping[str, Any], dtype: torch.dtype,
                        keep: bool = True) -> dict[str, torch.Tensor]:
        """The kernel's layout for this call, built on the first call that needs it (one layout
        is kept at a time, in non-persistent buffers; ``keep=False`` builds one that is not
        kept, unless the kept one is the one wanted)."""
        key = (kernel.name, tuple(sorted(options.items())), dtype, self._buffers["codes"].device)
        if key == self._layout_key:
            return self._layout
        assert kernel.prepare is not None
        if keep:
            self._drop_layout()  # the old layout freed before the new one is built
        with torch.inference_mode(False), torch.no_grad():
            built = kernel.prepare(self.qweight, dtype, options)
        if keep:
            for name, tensor in built.items():
                self.register_buffer(_LAYOUT_PREFIX + name, tensor, persistent=False)
            self._layout, self._layout_key = dict(built), key
        return built

    def _drop_layout(self) -> None:
        for name in self._layout:
            del self._buffers[_LAYOUT_PREFIX + name]
            self._non_persistent_buffers_set.discard(_LAYOUT_PREFIX + name)
        self._layout, self._layout_key = {}, None

    # --- keeping the cached QTensor and layout right ---------------------------------------
    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
               ) -> QuantLinear:
        """Move/convert like any module, except that packed tensors keep their dtypes."""
        self._drop_layout()
        packed = {id(self._buffers[n]) for n in self._parts}

        def keep_dtype(t: torch.Tensor) -> torch.Tensor:
            if id(t) not in packed or not t.is_floating_point():
                return fn(t)
            return fn(t.view(_SAME_WIDTH_INT[t.element_size()])).view(t.dtype)

        out = super()._apply(keep_dtype, recurse)
        self._qt = None
        self._dispatch.clear()
        return out

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._drop_layout()
        super()._load_from_state_dict(*args, **kwargs)
        self._qt = None  # assign=True replaces the buffers

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in self.__dict__.get("_parts", ()):
            self._drop_layout()
            self._qt = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickle/deepcopy without the runtime layout and dispatch cache (rebuilt on use)."""
        state = self.__dict__.copy()
        state["_buffers"] = {n: t for n, t in self._buffers.items()
                             if not n.startswith(_LAYOUT_PREFIX)}
        state["_non_persistent_buffers_set"] = {
            n for n in self._non_persistent_buffers_set if not n.startswith(_LAYOUT_PREFIX)}
        state.update(_qt=None, _dispatch={}, _layout={}, _layout_key=None)
        return state

    def extra_repr(self) -> str:
        ran = f", ran={'/'.join(sorted(self.kernels_ran))}" if self.kernels_ran else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"scheme={self.scheme}, bias={self.bias is not None}, "
                f"kernel={self._choice.label()}{ran}")


def quantized_layers(model: nn.Module) -> dict[str, QuantLinear]:
    """The QuantLinear modules of a model, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}

"""The kernel registry: what each kernel supports, and dispatch to the best one for a call.

A :class:`Kernel` computes ``y = x @ W^T + b`` for a QuantLinear. It declares the scheme
traits it handles (:class:`Traits`), the device types and activation dtypes it runs on, and a
priority. :func:`select` returns the registered kernel of highest priority that supports a call
(ties go to the one registered first); the reference kernel supports every call, so there is
always one. Adding a kernel is one new module that builds a ``Kernel`` and calls
:func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme

# linear(x, qweight, bias, layout, options) -> y; ``bias`` is None or already in x's dtype,
# ``layout`` holds the tensors ``prepare`` built (empty without one).
LinearFn = Callable[[torch.Tensor, QTensor, "torch.Tensor | None", Mapping[str, torch.Tensor],
                     Mapping[str, Any]], torch.Tensor]
# prepare(qweight, activation dtype, options) -> runtime layout, kept in non-persistent buffers
PrepareFn = Callable[[QTensor, torch.dtype, Mapping[str, Any]], dict[str, torch.Tensor]]
# grad_input(grad_out, qweight, layout) -> grad_out @ W (float32), the input's gradient
GradInputFn = Callable[[torch.Tensor, QTensor, Mapping[str, torch.Tensor]], torch.Tensor]


def _frozen(values: Iterable[Any] | None) -> frozenset[Any] | None:
    return None if values is None else frozenset(values)


@dataclass(frozen=True)
class Traits:
    """The schemes a kernel handles; a trait left at None accepts any value.

    ``kinds`` are element format kinds (``int``, ``float``, ``codebook``); ``formats`` element
    format names as in scheme names (``int8``, ``nf4``); ``granularities`` are ``tensor``,
    ``channel`` and ``block``; ``zero_point`` is whether the scheme stores zero points (asym);
    ``zero_point_domains`` which kind (``float``: ``code*scale + zero``, ``int``: ``(code - zp) *
    scale``; a symmetric scheme has ``none``); ``permuted`` whether the layer's input columns
    are stored in another order (GPTQ's act-order ``perm``); ``activations`` which activation
    quantization it runs (``none`` for weight-only, else ``ActScheme.kind()``: ``int8-token``,
    ``fp8-tensor``, ``int8-token-thr``, ...). Unlike the others it defaults to weight-only, so a
    kernel that does not quantize activations is never chosen for a scheme that does.
    """

    kinds: frozenset[str] | None = None
    formats: frozenset[str] | None = None
    bits: frozenset[int] | None = None
    granularities: frozenset[str] | None = None
    block_sizes: frozenset[int] | None = None
    zero_point: bool | None = None
    zero_point_domains: frozenset[str] | None = None
    scale_formats: frozenset[str] | None = None
    double_quant: bool | None = None
    tensor_scale: bool | None = None
    outliers: bool | None = None
    permuted: bool | None = None
    activations: frozenset[str] | None = frozenset({"none"})

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not isinstance(value, bool):
                object.__setattr__(self, f.name, _frozen(value))

    def accepts(self, scheme: Scheme, permuted: bool = False) -> bool:
        """Whether every trait of ``scheme`` (and of a layer stored with a column permutation,
        when ``permuted``) is one this kernel handles."""
        have = {
            "kinds": scheme.kind, "formats": scheme.format, "bits": scheme.bits,
            "granularities": scheme.granularity, "block_sizes": scheme.block_size,
            "zero_point": not scheme.symmetric, "scale_formats": scheme.scale_format,
            "double_quant": scheme.double_quant, "tensor_scale": scheme.tensor_scale,
            "outliers": scheme.outliers is not None, "permuted": permuted,
            "zero_point_domains": "none" if scheme.symmetric else scheme.zero_point,
            "activations": "none" if scheme.activations is None else scheme.activations.kind(),
        }
        for name, value in have.items():
            want = getattr(self, name)
            if want is None:
                continue
            if isinstance(want, bool) and want != value:
                return False
            if isinstance(want, frozenset) and value not in want:
                return False
        return True


@dataclass(frozen=True)
class Kernel:
    """One way to run a QuantLinear; see the module docstring.

    ``devices``/``dtypes``: device types (``"cpu"``, ``"cuda"``) and activation dtypes it runs
    on (None: any; activations are always floating point). ``options``: the options it takes
    with their defaults. ``fits(out_features, in_features)`` rejects shapes it cannot run
    (e.g. a tile size that must divide ``in_features``). ``prepare`` builds a runtime layout
    once per (device, dtype, options); without it the kernel works from the QTensor alone.
    ``grad_input`` (optional) computes a backward pass's ``grad_out @ W`` from that layout
    without a float copy of the whole weight (``lowbit.nn_grad``).
    """

    name: str
    linear: LinearFn
    traits: Traits = field(default_factory=Traits)
    devices: frozenset[str] | None = None
    dtypes: frozenset[torch.dtype] | None = None
    priority: int = 0
    options: tuple[tuple[str, Any], ...] = ()
    prepare: PrepareFn | None = None
    fits: Callable[[int, int], bool] | None = None
    grad_input: GradInputFn | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError("a kernel needs a non-empty name")
        object.__setattr__(self, "devices", _frozen(self.devices))
        object.__setattr__(self, "dtypes", _frozen(self.dtypes))
        object.__setattr__(self, "options", tuple((str(k), v) for k, v in self.options))

    def supports(self, scheme: Scheme, shape: tuple[int, int], device_type: str,
                 dtype: torch.dtype, permuted: bool = False) -> bool:
        """Whether this kernel can run a layer of ``scheme`` and ``shape`` on that call."""
        return ((self.devices is None or device_type in self.devices)
                and (self.dtypes is None or dtype in self.dtypes)
                and self.traits.accepts(scheme, permuted)
                and (self.fits is None or self.fits(*shape)))

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults updated with ``given``; an option it does not take is a ValueError."""
        defaults = dict(self.options)
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ValueError(f"kernel {self.name!r} takes no option {unknown[0]!r}; its options: "
                             f"{', '.join(defaults) or 'none'}")
        return {**defaults, **given}

    def label(self, options: Mapping[str, Any]) -> str:
        """``name`` and the options that differ from the defaults, e.g. ``x(cache_weight=True)``."""
        changed = [f"{k}={v!r}" for k, v in options.items() if dict(self.options).get(k) != v]
        return f"{self.name}({', '.join(changed)})" if changed else self.name


_KERNELS: list[Kernel] = []
_version = 0  # bumped by every change, so layers' cached dispatch is refreshed


def version() -> int:
    """A number that changes whenever the registry does."""
    return _version


def register(kernel: Kernel, *, replace: bool = False) -> Kernel:
    """Add ``kernel`` (names are unique unless ``replace``); returns it."""
    global _version
    if not isinstance(kernel, Kernel):
        raise TypeError(f"register() takes a Kernel, got {type(kernel).__name__}")
    existing = [i for i, k in enumerate(_KERNELS) if k.name == kernel.name]
    if existing and not replace:
        raise ValueError(f"kernel {kernel.name!r} is already registered")
    if existing:
        _KERNELS[existing[0]] = kernel
    else:
        _KERNELS.append(kernel)
    _version += 1
    return kernel


def unregister(name: str) -> None:
    """Remove a kernel (the reference kernel stays: it is the fallback of every call)."""
    global _version
    if name == REFERENCE:
        raise ValueError("the reference kernel cannot be unregistered")
    get(name)
    _KERNELS[:] = [k for k in _KERNELS if k.name != name]
    _version += 1


def get(name: str) -> Kernel:
    """The registered kernel called ``name``; the error lists the registered names."""
    for k in _KERNELS:
        if k.name == name:
            return k
    raise ValueError(f"unknown kernel {name!r}; registered kernels: {', '.join(names())}")


def names() -> list[str]:
    """Names of the registered kernels, in registration order."""
    return [k.name for k in _KERNELS]


REFERENCE = "reference"


def select(scheme: Scheme, shape: tuple[int, int], device_type: str, dtype: torch.dtype,
           pinned: str | None = None, permuted: bool = False) -> Kernel:
    """The kernel for one call: ``pinned`` if it supports the call, else the best registered
    kernel that does (highest priority, then registration order); the reference at worst."""
    if pinned is not None:
        kernel = get(pinned)
        if kernel.supports(scheme, shape, device_type, dtype, permuted):
            return kernel
    best: Kernel | None = None
    for k in _KERNELS:
        if k.supports(scheme, shape, device_type, dtype, permuted) and (
                best is None or k.priority > best.priority):
            best = k
    assert best is not None, "the reference kernel supports every call"
    return best

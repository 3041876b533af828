"""Which kernel a QuantLinear runs, and with which options: per layer, set per model or per layer.

A layer holds a :class:`KernelChoice`: a kernel pinned by name (or None: the best registered
kernel for each call) and options per kernel name. ``use`` pins a kernel; ``configure`` sets a
kernel's options without pinning it (they apply wherever that kernel runs); ``using`` and
``saved`` put every layer's previous choice back at the end of a block; ``layers`` and
``tally`` say what each layer chose and what it ran.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from lowbit.kernels import registry

if TYPE_CHECKING:
    from lowbit.nn import QuantLinear

_Options = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class KernelChoice:
    """A pinned kernel name (None: automatic) and the options given to each kernel by name."""

    kernel: str | None = None
    options: tuple[tuple[str, _Options], ...] = ()

    def __post_init__(self) -> None:
        if self.kernel is not None:
            registry.get(self.kernel)
        for name, opts in self.options:
            registry.get(name).resolve_options(dict(opts))
            for _, value in opts:
                hash(value)  # options are part of the cached layout's key: plain values only

    def options_for(self, name: str) -> dict[str, Any]:
        """The options given to kernel ``name`` (empty if none)."""
        return dict(dict(self.options).get(name, ()))

    def with_options(self, name: str, **options: Any) -> KernelChoice:
        """A copy where kernel ``name``'s options are updated with ``options``."""
        merged = {**self.options_for(name), **options}
        rest = tuple((n, o) for n, o in self.options if n != name)
        return KernelChoice(self.kernel, (*rest, (name, tuple(sorted(merged.items())))))

    def label(self) -> str:
        """``auto``, ``reference(cache_weight=True)``, or ``auto; reference(cache_weight=True)``."""
        configured = [registry.get(n).label(registry.get(n).resolve_options(dict(o)))
                      for n, o in self.options if n != self.kernel]
        head = "auto"
        if self.kernel is not None:
            k = registry.get(self.kernel)
            head = k.label(k.resolve_options(self.options_for(self.kernel)))
        return "; ".join([head, *configured])


def quant_layers(module: nn.Module) -> dict[str, QuantLinear]:
    """The QuantLinear layers of ``module`` (``module`` itself included) by qualified name."""
    from lowbit.nn import QuantLinear

    return {name: m for name, m in module.named_modules() if isinstance(m, QuantLinear)}


def use(module: nn.Module, kernel: str | None = None, **options: Any) -> None:
    """Pin ``kernel`` (None: automatic) with ``options`` on every QuantLinear in ``module``,
    replacing each layer's previous choice.

    A pinned kernel that cannot run a call (scheme, device, dtype or shape) falls back to the
    automatic choice with a warning. Pass a single layer as ``module`` to choose per layer.
    """
    if kernel is None and options:
        raise ValueError("options belong to a kernel: use(module, 'reference', ...) or "
                         "configure(module, 'reference', ...)")
    choice = KernelChoice(kernel)
    if kernel is not None and options:
        choice = choice.with_options(kernel, **options)
    for layer in _layers_or_error(module).values():
        layer.kernel_choice = choice


def configure(module: nn.Module, kernel: str, **options: Any) -> None:
    """Set ``kernel``'s options on every QuantLinear in ``module``, wherever that kernel runs,
    without changing which kernel is chosen."""
    for layer in _layers_or_error(module).values():
        layer.kernel_choice = layer.kernel_choice.with_options(kernel, **options)


@contextmanager
def saved(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block choices may change; every layer's choice is put back at the end."""
    before = {layer: layer.kernel_choice for layer in quant_layers(module).values()}
    try:
        yield module
    finally:
        for layer, choice in before.items():
            layer.kernel_choice = choice


@contextmanager
def using(module: nn.Module, kernel: str | None = None, **options: Any) -> Iterator[nn.Module]:
    """:func:`use` for the duration of a block."""
    with saved(module):
        use(module, kernel, **options)
        yield module


@dataclass(frozen=True)
class LayerKernels:
    """One layer's choice (:meth:`KernelChoice.label`) and the kernels it ran since last reset."""

    choice: str
    ran: tuple[str, ...]


def layers(module: nn.Module) -> dict[str, LayerKernels]:
    """Per QuantLinear: what it chose and which kernels (with options) its calls ran."""
    return {name: LayerKernels(m.kernel_choice.label(), tuple(sorted(m.kernels_ran)))
            for name, m in quant_layers(module).items()}


def tally(module: nn.Module) -> dict[str, int]:
    """How many layers ran each kernel (label with options) since the last :func:`reset_ran`."""
    counts: Counter[str] = Counter()
    for m in quant_layers(module).values():
        counts.update(m.kernels_ran)
    return dict(sorted(counts.items()))


def reset_ran(module: nn.Module) -> None:
    """Forget which kernels the layers ran (before a measurement that reports them)."""
    for m in quant_layers(module).values():
        m.kernels_ran.clear()


def _layers_or_error(module: nn.Module) -> Mapping[str, QuantLinear]:
    found = quant_layers(module)
    if not found:
        raise ValueError(f"{type(module).__name__} has no QuantLinear layers to choose a kernel "
                         "for; quantize it first")
    return found

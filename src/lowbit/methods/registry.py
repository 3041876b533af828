"""The registry of quantization methods: one protocol, looked up by name.

A method is a function ``quantize_weight(w, scheme, stats, *, name) -> QTensor``: ``w`` is the
float weight (out_features x in_features), ``scheme`` a parsed :class:`~lowbit.core.scheme.Scheme`,
``stats`` the layer's :class:`~lowbit.calibration.stats.LayerStats` (None for a method that needs
no data) and ``name`` the layer's name, for error messages. A method declares the statistics it
needs (a subset of :data:`STATISTICS`); the pipeline collects exactly those.

Adding a method is one file in ``lowbit/methods/`` that registers itself::

    @register_method("mine", needs={"x2_mean"})
    def quantize_mine(w, scheme, stats, *, name): ...

Every module of the package is imported the first time the registry is read, so that file is
all it takes for ``lowbit.quantize(..., method="mine")``, ``quantize_folder`` and the CLI's
``--method`` to find it. Code outside the package calls :func:`register_method` itself.

Options: a method's keyword-only parameters after ``name`` (each with a default) are its options.
``get_method("gptq").with_options(damp=0.02)`` is a Method with those values bound; pass it
wherever a method name goes (``lowbit.quantize(..., method=...)``, ``quantize_folder``), or give
``--method-option damp=0.02`` to the CLI. ``register_method(name, fn, options={...})`` registers a
variant with other defaults (``gptq-actorder`` is ``gptq`` with ``actorder=True``).
:meth:`Method.settings` (every option's value) is written into each layer's record.

Block step: a data-aware method may also register ``prepare_block``, a function that changes a
decoder block before its Linears are quantized (AWQ folds per-channel scales into the norm or
Linear before a group of Linears). The in-memory driver calls it once per block with that
block's statistics; when it returns True the statistics are measured again on the changed
block. It receives those of the method's options that it names as keyword parameters.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from lowbit.calibration.stats import LayerStats
    from lowbit.core.qtensor import QTensor
    from lowbit.core.scheme import Scheme

# What calibration can collect per Linear (see lowbit.calibration.stats for the definitions).
STATISTICS = frozenset({"x2_mean", "act_max", "hessian"})

# A block step: (block, stats by name inside the block, schemes by the same names, *, name=the
# block's name, **options) -> whether it changed the block (then its statistics are measured
# again before its Linears are quantized). See Method.prepare.
PrepareBlock = Callable[..., bool]


class QuantizeWeight(Protocol):
    """The signature every method implements."""

    def __call__(self, w: torch.Tensor, scheme: Scheme, stats: LayerStats | None, *,
                 name: str, **options: Any) -> QTensor: ...


def option_defaults(fn: Callable) -> dict[str, Any]:
    """The options of a method function: its keyword-only parameters other than ``name``, with
    their defaults."""
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params
            if p.kind is p.KEYWORD_ONLY and p.name != "name"
            and p.default is not inspect.Parameter.empty}


def _fits(value: Any, default: Any) -> bool:
    """Whether ``value`` has the type of the option's ``default`` (an int is a float; a bool
    is only a bool; a None default takes anything)."""
    if default is None:
        return True
    if isinstance(value, bool) or isinstance(default, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def _parse_value(method: str, key: str, text: str, default: Any) -> Any:
    """``text`` as a value of the type of ``default``; ValueError naming the option."""
    try:
        if isinstance(default, bool):
            flags = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
            return flags[text.lower()]
        if isinstance(default, (int, float)):
            return type(default)(text)
    except (KeyError, ValueError):
        raise ValueError(f"method {method!r}: option {key}={text!r} is not a "
                         f"{type(default).__name__} like its default {default!r}") from None
    return text


@dataclass(frozen=True)
class Method:
    """A registered method: its name, its function, the statistics it needs and the option
    values bound to it (sorted (name, value) pairs; see the module docstring)."""

    name: str
    fn: QuantizeWeight
    needs: frozenset[str]
    options: tuple[tuple[str, Any], ...] = ()
    prepare_block: PrepareBlock | None = None
    #: writes ggml types (llama.cpp's block bytes): rtn, and rtn-imatrix with the importance
    ggml: bool = False

    def settings(self) -> dict[str, Any]:
        """Every option's value as the method will run (defaults, then the bound values)."""
        return {**option_defaults(self.fn), **dict(self.options)}

    def with_options(self, **options: Any) -> Method:
        """This method with ``options`` bound; an unknown option or a value of another type
        than its default is a ValueError naming the method."""
        known = option_defaults(self.fn)
        for key, value in options.items():
            if key not in known:
                raise ValueError(f"method {self.name!r} has no option {key!r}; its options: "
                                 f"{', '.join(known) or 'none'}")
            default = known[key]
            if not _fits(value, default):
                raise ValueError(f"method {self.name!r}: option {key}={value!r} should be a "
                                 f"{type(default).__name__} like its default {default!r}")
        merged = {**dict(self.options), **options}
        return replace(self, options=tuple(sorted(merged.items())))

    def with_option_strings(self, pairs: Iterable[str]) -> Method:
        """:meth:`with_options` from ``KEY=VALUE`` strings (the CLI's ``--method-option``), each
        value read as the type of the option's default (bools: true/false, 1/0, yes/no)."""
        known, parsed = option_defaults(self.fn), {}
        for pair in pairs:
            key, sep, text = pair.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in known:
                raise ValueError(f"method {self.name!r}: option {pair!r} should be KEY=VALUE "
                                 f"with KEY one of: {', '.join(known) or 'none'}")
            parsed[key] = _parse_value(self.name, key, text.strip(), known[key])
        return self.with_options(**parsed)

    def prepare(self, block: Any, stats: Mapping[str, LayerStats],
                schemes: Mapping[str, Scheme], *, name: str) -> bool:
        """Run the method's block step, if it has one, on a decoder block before its Linears are
        quantized (names relative to the block); True when it changed the block."""
        if self.prepare_block is None:
            return False
        params = inspect.signature(self.prepare_block).parameters
        options = {k: v for k, v in self.settings().items() if k in params}
        return bool(self.prepare_block(block, stats, schemes, name=name, **options))

    @property
    def data_aware(self) -> bool:
        """True when the method needs calibration statistics (text run through the model)."""
        return bool(self.needs)

    def quantize_weight(self, w: torch.Tensor, scheme: Scheme | str,
                        stats: LayerStats | None = None, *, name: str = "weight") -> QTensor:
        """Run the method on one weight, checking its inputs and what it returns."""
        from lowbit.core.qtensor import QTensor
        from lowbit.core.scheme import Scheme

        scheme = Scheme.parse(scheme) if isinstance(scheme, str) else scheme
        if scheme.ggml_type and not self.ggml:
            raise ValueError(f"{name}: method {self.name!r} does not quantize to the ggml type "
                             f"{scheme}; ggml types are written by llama.cpp's own quantizer "
                             "(method rtn, or rtn-imatrix with an importance matrix)")
        if self.needs:
            missing = sorted(self.needs if stats is None else stats.missing(self.needs))
            if missing:
                raise ValueError(f"{name}: method {self.name!r} needs calibration statistics "
                                 f"{missing}; run it with calibration data "
                                 "(lowbit.quantize(..., calibration=...))")
        qt = self.fn(w, scheme, stats if self.needs else None, name=name, **dict(self.options))
        if not isinstance(qt, QTensor):
            raise TypeError(f"{name}: method {self.name!r} returned {type(qt).__name__}, "
                            "not a QTensor")
        if tuple(qt.shape) != tuple(w.shape):
            raise ValueError(f"{name}: method {self.name!r} returned shape {tuple(qt.shape)} "
                             f"for a weight of shape {tuple(w.shape)}")
        return qt


_REGISTRY: dict[str, Method] = {}
_discovered = False


def register_method(name: str, fn: QuantizeWeight | None = None, *,
                    needs: Iterable[str] = (), options: Mapping[str, Any] | None = None,
                    prepare_block: PrepareBlock | None = None,
                    ggml: bool = False) -> Callable | Method:
    """Register ``fn`` as method ``name`` (or, without ``fn``, return a decorator that does).

    ``needs``: the statistics the method reads from ``stats``; ``options``: values bound to
    ``fn``'s options under this name; ``prepare_block``: a block step (data-aware methods only;
    see :meth:`Method.prepare`); ``ggml``: the method also writes ggml types (their block
    bytes, as llama.cpp's quantizer does); a name registered twice is an error (call
    :func:`unregister_method` first to replace one)."""
    wanted = frozenset(needs)
    unknown = sorted(wanted - STATISTICS)
    if unknown:
        raise ValueError(f"method {name!r}: unknown statistics {unknown}; "
                         f"choose from {sorted(STATISTICS)}")
    if not name or not name.replace("-", "_").isidentifier():
        raise ValueError(f"method name {name!r}: use letters, digits, '_' or '-'")
    if prepare_block is not None and not wanted:
        raise ValueError(f"method {name!r}: a block step (prepare_block) needs statistics; "
                         "declare them with needs=")

    def add(f: QuantizeWeight) -> QuantizeWeight:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered "
                             f"(by {_REGISTRY[name].fn!r})")
        method = Method(name, f, wanted, prepare_block=prepare_block, ggml=ggml)
        _REGISTRY[name] = method.with_options(**options) if options else method
        return f

    if fn is None:
        return add
    add(fn)
    return _REGISTRY[name]


def unregister_method(name: str) -> None:
    """Remove method ``name`` (for tests and for replacing a method); unknown -> ValueError."""
    get_method(name)
    del _REGISTRY[name]


def _discover() -> None:
    """Import every module of ``lowbit.methods`` once, so that each registers its methods."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    import lowbit.methods as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")


def get_method(method: str | Method) -> Method:
    """The registered method of that name (a Method is returned as it is)."""
    if isinstance(method, Method):
        return method
    if not isinstance(method, str):
        raise TypeError(f"method must be a name or a Method, got {type(method).__name__}")
    _discover()
    try:
        return _REGISTRY[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; registered methods: "
                         f"{', '.join(available_methods())}") from None


def available_methods() -> list[str]:
    """Names of every registered method, sorted."""
    _discover()
    return sorted(_REGISTRY)

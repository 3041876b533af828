"""Kernels: how a QuantLinear computes ``x @ W^T + b``, chosen per call by scheme, device and dtype.

Pick per model or per layer::

    lowbit.kernels.use(model, "reference", cache_weight=True)   # pin, with options
    lowbit.kernels.configure(model, "reference", cache_weight=True)  # options only
    with lowbit.kernels.using(model, "reference"): ...          # for a block
    lowbit.kernels.layers(model)                                # what each layer chose and ran

Add one: build a :class:`Kernel` in a new module and :func:`register` it; import that module
here so it is registered with the package. Built in: ``reference`` (every scheme), ``cpu-int8``
and ``cpu-int4`` (:mod:`lowbit.kernels.cpu`, PyTorch's packed CPU matmuls), ``cpu-lut4``
(:mod:`lowbit.kernels.cpu_lut`, lowbit's C kernel for 4-bit tables: NF4, FP4), ``cpu-w8a8``
(:mod:`lowbit.kernels.cpu_w8a8`: int8 weights times int8 activations, lowbit's C VNNI kernel
or ``torch._int_mm``), ``triton`` (:mod:`lowbit.kernels.triton_linear`: CUDA, registered when
triton is installed, without importing it), and ``triton-w8a8-int8`` / ``triton-w8a8-fp8``
(:mod:`lowbit.kernels.triton_w8a8`: W8A8 on CUDA, likewise).
"""

from lowbit.kernels import cpu, cpu_lut, cpu_w8a8, reference, triton_linear, triton_w8a8
from lowbit.kernels.choice import (
    KernelChoice,
    LayerKernels,
    configure,
    layers,
    quant_layers,
    reset_ran,
    saved,
    tally,
    use,
    using,
)
from lowbit.kernels.registry import (
    REFERENCE,
    Kernel,
    Traits,
    get,
    names,
    register,
    select,
    unregister,
)

__all__ = [
    "REFERENCE", "Kernel", "KernelChoice", "LayerKernels", "Traits", "configure", "cpu",
    "cpu_lut", "cpu_w8a8", "get",
    "layers", "names", "quant_layers", "reference", "register", "reset_ran", "saved", "select",
    "tally", "triton_linear", "triton_w8a8", "unregister", "use", "using",
]

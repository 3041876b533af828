"""QTensor: a quantized 2-D weight held as packed codes plus scales, zero points and outliers.

Every stored piece is a real tensor of the dtype it is stored in, so ``nbytes`` is the true
storage and ``bits_per_weight`` counts everything (codes, scales, zero points, second-level
scales, outliers). Neither is stored: both are computed from the tensors.

Layout, for a weight of shape (out_features, in_features) and a scheme with G groups a row:

* ``codes``: uint8, the ``out*in`` codes packed row-major (``lowbit.core.packing``).
* ``scale``: (R, G) in the scale format's storage dtype, R = 1 for a per-tensor scale, else
  ``out``. Under double quantization it holds int8 codes of the scales (as uint8) instead.
* ``zero``: (R, G), asymmetric schemes only. Float zero point (the default): in the scale
  format, the value of code 0, so a weight is ``code * scale + zero``. Integer zero point
  (``zpint``): uint8 codes in the element's unsigned range, ``w = (code - zero) * scale``.
* ``scale_scale`` (fp32, one per 256 scales) and ``scale_mean`` (fp32, 1): double quantization.
* ``tensor_scale``: fp32 (1,), a second-level scale for the whole tensor (NVFP4).
* ``outlier_index`` (int32, k) and ``outlier_value`` (fp32, k): weights kept out of the grid,
  exactly, by flat index into the stored (out, in) layout (the permuted one when ``perm`` is
  set). Checkpoints written before lowbit stored them in fp32 hold fp16 values; those load as
  they are (and are counted at 16 bits).
* ``perm``: int32 (in,), an input-column permutation (GPTQ's act-order): stored column k is
  column ``perm[k]`` of the original weight, and groups are formed over the stored order.
  :meth:`QTensor.dequantize` returns the weight in the original column order.
* ``input_scale``: fp32 (1,), the static activation scale of a scheme with ``atensor``
  activations (:mod:`lowbit.core.activations`), measured on calibration text.

A ggml scheme (``q4_k``, ...) stores ``codes`` only: ggml's block bytes, (out, row bytes);
see :mod:`lowbit.core.ggml_blocks`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.core import ggml_blocks
from lowbit.core.packing import pack, packed_nbytes, unpack
from lowbit.core.qparams import QParams, dequantize_codes
from lowbit.core.scheme import DQ_BLOCK, Scheme
from lowbit.formats import IntFormat, get_format

_TENSOR_FIELDS = (
    "codes", "scale", "zero", "scale_scale", "scale_mean", "tensor_scale",
    "outlier_index", "outlier_value", "perm", "input_scale",
)


@dataclass
class QTensor:
    """A quantized weight; see the module docstring for the meaning of each tensor."""

    scheme: Scheme
    shape: tuple[int, int]
    codes: torch.Tensor
    scale: torch.Tensor | None = None  # None only for a ggml scheme
    zero: torch.Tensor | None = None
    scale_scale: torch.Tensor | None = None
    scale_mean: torch.Tensor | None = None
    tensor_scale: torch.Tensor | None = None
    outlier_index: torch.Tensor | None = None
    outlier_value: torch.Tensor | None = None
    perm: torch.Tensor | None = None
    input_scale: torch.Tensor | None = None

    @classmethod
    def from_codes(
        cls, codes: torch.Tensor, qparams: QParams, *,
        outliers: tuple[torch.Tensor, torch.Tensor] | None = None,
        perm: torch.Tensor | None = None,
    ) -> QTensor:
        """Pack ``codes`` (uint8, unpacked, ``qparams.shape``) with the stored pieces of
        ``qparams``; ``outliers`` is (int32 flat index, fp32 value), ``perm`` see the module."""
        if codes.dtype != torch.uint8 or tuple(codes.shape) != qparams.shape:
            raise ValueError(f"codes: expected uint8 of shape {qparams.shape}, got "
                             f"{codes.dtype} of shape {tuple(codes.shape)}")
        index, value = outliers if outliers is not None else (None, None)
        qt = cls(scheme=qparams.scheme, shape=qparams.shape,
                 codes=pack(codes.contiguous(), qparams.scheme.bits), outlier_index=index,
                 outlier_value=value, perm=perm, **qparams.stored())
        qt.validate()
        return qt

    # --- sizes -------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by field name (absent ones left out)."""
        return {n: t for n in _TENSOR_FIELDS if (t := getattr(self, n)) is not None}

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def device(self) -> torch.device:
        """Where the packed codes are (peft places a layer's adapters by its ``qweight``)."""
        return self.codes.device

    @property
    def nbytes(self) -> int:
        """Bytes of storage: every stored tensor, exactly."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    @property
    def bits_per_weight(self) -> float:
        """Storage bits per weight, scales, zero points and outliers included."""
        return self.nbytes * 8 / self.numel

    # --- values ------------------------------------------------------------------------
    def effective_scale(self) -> torch.Tensor:
        """The float32 scale of every group, (R, G), after every level of scaling."""
        scale_fmt = self.scheme.scale_fmt
        if self.scale_scale is not None:
            q = get_format("int8").decode(self.scale).reshape(-1)
            n_blocks = self.scale_scale.numel()
            q = torch.nn.functional.pad(q, (0, n_blocks * DQ_BLOCK - q.numel()))
            s = (q.view(n_blocks, DQ_BLOCK) * self.scale_scale.view(-1, 1)).reshape(-1)
            s = s[: self.scale.numel()].view(self.scale.shape) + self.scale_mean
        else:
            s = scale_fmt.decode(self.scale)
        if self.tensor_scale is not None:
            s = s * self.tensor_scale
        return s

    def effective_zero(self) -> torch.Tensor | None:
        """The float32 zero of every group, (R, G): the value of code 0 (float zero point) or
        the zero-point code (``zpint``); None when symmetric."""
        if self.zero is None:
            return None
        if self.scheme.zero_point == "int":
            return self.zero.to(torch.float32)
        return self.scheme.scale_fmt.decode(self.zero)

    def qparams(self) -> QParams:
        """The scales and zero points of this tensor, working and stored values."""
        return QParams(self.scheme, self.shape, self.effective_scale(), self.effective_zero(),
                       self.scale, self.zero, self.scale_scale, self.scale_mean,
                       self.tensor_scale)

    def element_values(self) -> torch.Tensor:
        """The decoded codes as float32 (out, in), before scaling."""
        fmt = self.scheme.element_format
        codes = unpack(self.codes, fmt.bits, self.numel).view(self.shape)
        if isinstance(fmt, IntFormat):
            return fmt.decode_int(codes).to(torch.float32)
        return fmt.decode(codes)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight this QTensor stands for, shape ``self.shape``, in the original column
        order."""
        if self.scheme.ggml_type:
            return ggml_blocks.dequantize_blocks(self.codes, self.scheme).to(dtype)
        codes = unpack(self.codes, self.scheme.bits, self.numel).view(self.shape)
        w = dequantize_codes(codes, self.qparams())
        if self.outlier_index is not None:
            w.view(-1)[self.outlier_index.long()] = self.outlier_value.to(torch.float32)
        if self.perm is not None:
            w = w[:, torch.argsort(self.perm.long())]
        return w.to(dtype)

    # --- (de)serialisation --------------------------------------------------------------
    @classmethod
    def from_tensors(
        cls, scheme: Scheme, shape: tuple[int, int], tensors: dict[str, torch.Tensor],
        name: str = "weight",
    ) -> QTensor:
        """Rebuild from :meth:`tensors`; checks that every piece has the size it must have."""
        unknown = set(tensors) - set(_TENSOR_FIELDS)
        if unknown:
            raise ValueError(f"{name}: unknown quantized tensor parts {sorted(unknown)}")
        if "codes" not in tensors or ("scale" not in tensors and not scheme.ggml_type):
            raise ValueError(f"{name}: a quantized tensor needs 'codes'"
                             + ("" if scheme.ggml_type else " and 'scale'"))
        if missing := sorted(required_parts(scheme) - set(tensors)):
            raise ValueError(f"{name}: scheme {scheme} needs parts {missing}, not stored")
        qt = cls(scheme=scheme, shape=(int(shape[0]), int(shape[1])), **tensors)
        qt.validate(name)
        return qt

    def validate(self, name: str = "weight") -> None:
        """Raise ValueError (naming ``name``) if a stored piece does not fit the shape/scheme."""
        if self.scheme.ggml_type:
            if extra := sorted(set(self.tensors()) - {"codes"}):
                raise ValueError(f"{name}: ggml type {self.scheme} stores only 'codes', got "
                                 f"parts {extra} too")
            ggml_blocks.validate_blocks(self.codes, self.scheme, self.shape, name)
            return
        out_f, in_f = self.shape
        expected_codes = packed_nbytes(self.numel, self.scheme.bits)
        if self.codes.dtype != torch.uint8 or self.codes.numel() != expected_codes:
            raise ValueError(
                f"{name}: codes should be {expected_codes} uint8 bytes for shape {self.shape} "
                f"at {self.scheme.bits} bits, got {self.codes.numel()} {self.codes.dtype}"
            )
        rows = 1 if self.scheme.granularity == "tensor" else out_f
        groups = -(-in_f // self.scheme.group_size(in_f))
        if tuple(self.scale.shape) != (rows, groups):
            raise ValueError(
                f"{name}: scale should have shape {(rows, groups)}, got {tuple(self.scale.shape)}"
            )
        if (self.zero is not None) == self.scheme.symmetric:
            raise ValueError(f"{name}: zero point presence does not match scheme {self.scheme}")
        if self.zero is not None:
            self._validate_zero(name, (rows, groups))
        if self.perm is not None:
            self._validate_perm(name)
        if (self.outlier_index is None) != (self.outlier_value is None):
            raise ValueError(f"{name}: outlier_index and outlier_value come together")
        if self.outlier_value is not None:
            self._validate_outliers(name)
        self._validate_input_scale(name)

    def _validate_input_scale(self, name: str) -> None:
        act = self.scheme.activations
        if self.input_scale is None:
            return
        if act is None or not act.static:
            raise ValueError(f"{name}: input_scale is only for static activation schemes "
                             f"(atensor), not {self.scheme}")
        s = self.input_scale
        if s.dtype != torch.float32 or tuple(s.shape) != (1,):
            raise ValueError(f"{name}: input_scale should be one float32, (1,), got "
                             f"{s.dtype} of shape {tuple(s.shape)}")
        if s.device.type != "meta" and not bool(torch.isfinite(s).all() and (s >= 0).all()):
            raise ValueError(f"{name}: input_scale should be finite and >= 0, got {s.tolist()}")

    def _validate_outliers(self, name: str) -> None:
        index, value = self.outlier_index, self.outlier_value
        if value.dtype not in (torch.float32, torch.float16) or value.dim() != 1:
            raise ValueError(f"{name}: outlier_value should be a 1-D float32 (or, written by an "
                             f"older lowbit, float16) tensor, got {value.dtype} of shape "
                             f"{tuple(value.shape)}")
        if index.dtype != torch.int32 or tuple(index.shape) != tuple(value.shape):
            raise ValueError(f"{name}: outlier_index should be int32 of shape "
                             f"{tuple(value.shape)}, got {index.dtype} of shape "
                             f"{tuple(index.shape)}")
        if index.numel() and not (int(index.min()) >= 0 and int(index.max()) < self.numel):
            raise ValueError(f"{name}: outlier_index out of range for shape {self.shape}")

    def _validate_zero(self, name: str, shape: tuple[int, int]) -> None:
        if tuple(self.zero.shape) != shape:
            raise ValueError(f"{name}: zero should have shape {shape}, got "
                             f"{tuple(self.zero.shape)}")
        if self.scheme.zero_point == "float":
            return
        qmax = self.scheme.element_format.qmax
        if self.zero.dtype != torch.uint8 or bool((self.zero > qmax).any()):
            raise ValueError(f"{name}: an integer zero point (zpint) should be uint8 codes in "
                             f"[0, {qmax}], got {self.zero.dtype} up to {int(self.zero.max())}")

    def _validate_perm(self, name: str) -> None:
        in_f = self.shape[1]
        p = self.perm
        if p.dtype != torch.int32 or tuple(p.shape) != (in_f,):
            raise ValueError(f"{name}: perm should be int32 of shape ({in_f},), got {p.dtype} "
                             f"of shape {tuple(p.shape)}")
        if not torch.equal(torch.sort(p.long()).values, torch.arange(in_f, device=p.device)):
            raise ValueError(f"{name}: perm is not a permutation of range({in_f})")


def required_parts(scheme: Scheme) -> set[str]:
    """The parts a QTensor of ``scheme`` must store (``perm`` is optional)."""
    if scheme.ggml_type:
        return {"codes"}
    parts = {"codes", "scale"}
    parts |= set() if scheme.symmetric else {"zero"}
    parts |= {"scale_scale", "scale_mean"} if scheme.double_quant else set()
    parts |= {"tensor_scale"} if scheme.tensor_scale else set()
    parts |= {"outlier_index", "outlier_value"} if scheme.outliers is not None else set()
    parts |= {"input_scale"} if scheme.activations is not None and scheme.activations.static \
        else set()
    return parts

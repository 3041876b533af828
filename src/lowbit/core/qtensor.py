"""QTensor: a quantized 2-D weight held as packed codes plus scales, zero points and outliers.

Every stored piece is a real tensor of the dtype it is stored in, so ``nbytes`` is the true
storage and ``bits_per_weight`` counts everything (codes, scales, zero points, second-level
scales, outliers). Neither is stored: both are computed from the tensors.

Layout, for a weight of shape (out_features, in_features) and a scheme with G groups a row:

* ``codes``: uint8, the ``out*in`` codes packed row-major (``lowbit.core.packing``).
* ``scale``: (R, G) in the scale format's storage dtype, R = 1 for a per-tensor scale, else
  ``out``. Under double quantization it holds int8 codes of the scales (as uint8) instead.
* ``zero``: (R, G) like ``scale``, asymmetric schemes only: the value of code 0, so a weight is
  ``code * scale + zero``.
* ``scale_scale`` (fp32, one per 256 scales) and ``scale_mean`` (fp32, 1): double quantization.
* ``tensor_scale``: fp32 (1,), a second-level scale for the whole tensor (NVFP4).
* ``outlier_index`` (int32, k) and ``outlier_value`` (fp16, k): weights kept out of the grid,
  by flat index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.core.packing import unpack
from lowbit.core.scheme import DQ_BLOCK, Scheme
from lowbit.formats import IntFormat, get_format

_TENSOR_FIELDS = (
    "codes", "scale", "zero", "scale_scale", "scale_mean", "tensor_scale",
    "outlier_index", "outlier_value",
)


@dataclass
class QTensor:
    """A quantized weight; see the module docstring for the meaning of each tensor."""

    scheme: Scheme
    shape: tuple[int, int]
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None = None
    scale_scale: torch.Tensor | None = None
    scale_mean: torch.Tensor | None = None
    tensor_scale: torch.Tensor | None = None
    outlier_index: torch.Tensor | None = None
    outlier_value: torch.Tensor | None = None

    # --- sizes -------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by field name (absent ones left out)."""
        return {n: t for n in _TENSOR_FIELDS if (t := getattr(self, n)) is not None}

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

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

    def element_values(self) -> torch.Tensor:
        """The decoded codes as float32 (out, in), before scaling."""
        fmt = self.scheme.element_format
        codes = unpack(self.codes, fmt.bits, self.numel).view(self.shape)
        if isinstance(fmt, IntFormat):
            return fmt.decode_int(codes).to(torch.float32)
        return fmt.decode(codes)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight this QTensor stands for, shape ``self.shape``."""
        out_f, in_f = self.shape
        w = self.element_values()
        group = self.scheme.group_size(in_f)
        s = _expand(self.effective_scale(), out_f, in_f, group, self.scheme)
        w.mul_(s)
        if self.zero is not None:
            w.add_(_expand(self.scheme.scale_fmt.decode(self.zero), out_f, in_f, group,
                           self.scheme))
        if self.outlier_index is not None:
            w.view(-1)[self.outlier_index.long()] = self.outlier_value.to(torch.float32)
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
        if "codes" not in tensors or "scale" not in tensors:
            raise ValueError(f"{name}: a quantized tensor needs 'codes' and 'scale'")
        qt = cls(scheme=scheme, shape=(int(shape[0]), int(shape[1])), **tensors)
        qt.validate(name)
        return qt

    def validate(self, name: str = "weight") -> None:
        """Raise ValueError (naming ``name``) if a stored piece does not fit the shape/scheme."""
        from lowbit.core.packing import packed_nbytes

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


def _expand(s: torch.Tensor, out_f: int, in_f: int, group: int, scheme: Scheme) -> torch.Tensor:
    """Broadcastable (out, in) view of per-group values ``s`` of shape (R, G)."""
    if scheme.granularity != "block":
        return s  # (1, 1) or (out, 1): broadcasts as is
    return s.repeat_interleave(group, dim=1)[:, :in_f]


"""How codes are chosen. Round-to-nearest (``rtn``) is the baseline every method is compared to."""

from lowbit.methods.rtn import quantize_rtn

__all__ = ["quantize_rtn"]

"""How codes are chosen. Round-to-nearest (``rtn``) is the baseline every method is compared to.

Methods are registered by name (:mod:`lowbit.methods.registry`); ``get_method("rtn")`` returns
one, ``available_methods()`` lists them.
"""

from __future__ import annotations

from lowbit.methods.registry import (
    STATISTICS,
    Method,
    available_methods,
    get_method,
    register_method,
    unregister_method,
)
from lowbit.methods.rtn import quantize_rtn

__all__ = ["STATISTICS", "Method", "available_methods", "get_method", "quantize_rtn",
           "register_method", "unregister_method"]

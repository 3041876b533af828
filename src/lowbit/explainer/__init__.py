"""``lowbit explain``: how one tensor of a model is quantized, from the bits up.

``source`` finds the tensor, ``formatview`` describes a format, ``analyze`` measures the tensor
under a scheme, ``trace`` follows one weight into a checkpoint's bytes, ``plots`` and ``page``
draw it, and ``explanation`` ties them together (:func:`explain`)."""

from lowbit.explainer.explanation import Explanation, explain

__all__ = ["Explanation", "explain"]

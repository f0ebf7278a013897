"""Stage-1 losses l(t, y) and their derivative l'(t, y).

What stage 1 sees of the loss is the label transform c_i = l'(f(x_i), y_i);
at initialisation f = 0, so Sigma_l = E[l'(0, y) x x^T].  Square loss is blind
to targets without a second-order Hermite part; Huber, pseudo-Huber and the
``even`` loss transform the labels and can see them.

Kernels understand three kinds (square, huber, pseudo_huber) plus an offset.
Label-transforming losses (``even`` and any user transform T) are the square
loss on transformed labels: l(t, y) = t^2/2 - t * T(y), so they reach the
kernels as ``square`` with y replaced by T(y).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .errors import MimfastInputError
from .kernels import reference


@dataclass(frozen=True)
class Loss:
    """A stage-1 loss: kernel kind, Huber scale and an optional label transform."""

    name: str
    kind: str = "square"
    delta: float = 1.0
    transform: Optional[Callable[[np.ndarray], np.ndarray]] = None

    def kernel_labels(self, y):
        """Labels as the kernels see them (transformed for label-transform losses)."""
        if self.transform is None:
            return y
        t = np.asarray(self.transform(y))
        if t.shape != y.shape:
            raise MimfastInputError(
                f"loss transform returned shape {t.shape}, expected {y.shape}; "
                "it must map labels elementwise")
        return t.astype(y.dtype, copy=False)

    def value(self, t, y_kernel, offset=0.0):
        return reference.loss_value(t, y_kernel, self.kind, self.delta, offset)

    def grad(self, t, y_kernel, offset=0.0):
        return reference.loss_grad(t, y_kernel, self.kind, self.delta, offset)


def _even_transform(y):
    y2 = y.astype(np.float64) ** 2
    return (y2 - y2.mean()).astype(y.dtype)


def _even_clip_transform(cap):
    def transform(y):
        y2 = np.minimum(y.astype(np.float64) ** 2, cap)
        return (y2 - y2.mean()).astype(y.dtype)
    transform.__name__ = "even_clip"
    return transform


LOSSES = ("square", "huber", "pseudo_huber", "even", "even_clip")


def _check_transform(spec):
    try:
        sig = inspect.signature(spec)
    except (TypeError, ValueError):  # some builtins have none: let the call decide
        return
    try:
        sig.bind(np.zeros(1))
    except TypeError:
        raise MimfastInputError(
            f"loss={getattr(spec, '__name__', spec)!r}: a callable loss must take one "
            f"argument, the label array, and return T(y); it has the signature {sig}")


def get_loss(spec, delta=1.0, dtype="float64"):
    """Loss from a name, a Loss, or a callable label transform T(y).

    ``dtype`` is the dtype the kernels compute in: delta^2 must fit in it.
    """
    if isinstance(spec, Loss):
        return spec
    if callable(spec):
        _check_transform(spec)
        return Loss(name=getattr(spec, "__name__", "transform"), kind="square",
                    transform=spec)
    if not isinstance(delta, (int, float)) or not np.isfinite(delta) or delta <= 0:
        raise MimfastInputError(f"delta={delta!r} must be a positive finite number")
    if spec in ("huber", "pseudo_huber", "even_clip"):
        dt = np.dtype(dtype)
        # the kernels form delta^2 (even_clip: (2 delta)^2); past sqrt(max) it is inf
        # and pseudo-Huber turns into inf * 0 = NaN
        limit = math.sqrt(float(np.finfo(dt).max)) / (2.0 if spec == "even_clip" else 1.0)
        if delta > limit:
            raise MimfastInputError(
                f"delta={delta!r} is too large for {dt.name}: the {spec} loss squares it; "
                f"pass delta <= {limit:.3g} (a delta far above every |label| already acts "
                "as the square loss)")
    if spec == "square":
        return Loss("square", "square")
    if spec == "huber":
        return Loss("huber", "huber", float(delta))
    if spec == "pseudo_huber":
        return Loss("pseudo_huber", "pseudo_huber", float(delta))
    if spec == "even":
        return Loss("even", "square", transform=_even_transform)
    if spec == "even_clip":
        # the even loss with y^2 capped at 4 delta^2: its label transform is bounded,
        # so its sample noise does not drown Sigma_l for heavy-tailed targets (he3, he4)
        return Loss("even_clip", "square", float(delta),
                    transform=_even_clip_transform(4.0 * float(delta) ** 2))
    raise MimfastInputError(
        f"loss={spec!r} is unknown; choose one of: {', '.join(LOSSES)}, "
        "or pass a callable label transform")

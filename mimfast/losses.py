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


def get_loss(spec, delta=1.0):
    """Loss from a name, a Loss, or a callable label transform T(y)."""
    if isinstance(spec, Loss):
        return spec
    if callable(spec):
        return Loss(name=getattr(spec, "__name__", "transform"), kind="square",
                    transform=spec)
    if not isinstance(delta, (int, float)) or not np.isfinite(delta) or delta <= 0:
        raise MimfastInputError(f"delta={delta!r} must be a positive finite number")
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

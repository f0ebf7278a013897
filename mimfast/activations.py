"""Activations by name: sigma and sigma' (the kernels take the name).

The stage-1 theory needs sigma'(0) = 0, sigma''(0) = 1 and bounded sigma''';
``logcosh`` (sigma' = tanh) is the default and ``quadratic`` makes stage 1
exact power iteration.  ``relu`` breaks sigma''(0) = 1 and is offered for the
stage-2 features only.
"""

from __future__ import annotations

from .errors import MimfastInputError
from .kernels import reference

STAGE1_ACTIVATIONS = ("logcosh", "quadratic")
STAGE2_ACTIVATIONS = ("logcosh", "quadratic", "relu")


def check_activation(name, stage=1, argname="activation"):
    allowed = STAGE1_ACTIVATIONS if stage == 1 else STAGE2_ACTIVATIONS
    if name not in allowed:
        extra = " (relu is allowed only for stage 2: it has no sigma''(0))" \
            if name == "relu" else ""
        raise MimfastInputError(
            f"{argname}={name!r} is unknown for stage {stage}; "
            f"choose one of: {', '.join(allowed)}{extra}")
    return name


def sigma(h, name="logcosh"):
    return reference.activation(h, name)


def sigma_prime(h, name="logcosh"):
    return reference.activation_grad(h, name)

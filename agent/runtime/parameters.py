"""Checks of the parameter tensors a task sends against the manifest's declarations."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from agent.packages.manifest import Manifest
from agent.runtime.errors import ParameterError

Float32Array = npt.NDArray[np.float32]


def checked_parameters(manifest: Manifest, parameters: Mapping[str, npt.ArrayLike]) -> dict[str, Float32Array]:
    """``parameters`` as contiguous float32 arrays in manifest order.

    Raises :class:`ParameterError` naming the first parameter that is missing, not
    declared, not float32, of another size or shape, or not finite. Nothing is cast:
    a float64 tensor is refused rather than silently rounded.
    """
    declared = {p.name for p in manifest.parameters}
    for name in parameters:
        if name not in declared:
            raise ParameterError(name, "is not a parameter of the package")
    checked: dict[str, Float32Array] = {}
    for decl in manifest.parameters:
        if decl.name not in parameters:
            raise ParameterError(decl.name, "is missing")
        value = np.asarray(parameters[decl.name])
        if value.dtype != np.float32:
            raise ParameterError(decl.name, f"has dtype {value.dtype}, the package declares float32")
        expected = math.prod(decl.shape)
        if value.size != expected:
            raise ParameterError(
                decl.name, f"has {value.size} elements, the package declares shape {list(decl.shape)} ({expected})"
            )
        if value.shape != decl.shape:
            raise ParameterError(decl.name, f"has shape {list(value.shape)}, the package declares {list(decl.shape)}")
        # A float64 sum of float32 values cannot overflow (2^28 * 3.4e38 < 1.8e308), so it is
        # finite exactly when every value is: no boolean mask of the model's size.
        with np.errstate(invalid="ignore"):  # inf + -inf is NaN, which is the answer wanted here
            total = float(np.sum(value, dtype=np.float64))
        if not math.isfinite(total):
            raise ParameterError(decl.name, "holds NaN or infinite values")
        checked[decl.name] = np.ascontiguousarray(value)
    return checked

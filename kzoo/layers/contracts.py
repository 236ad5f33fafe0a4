"""Input contracts of kzoo's layers: checked at every call, on every backend.

**Shapes** (rank, channels, number of neighbours, square matrices) are fixed
when a layer is built. The layer then sets a `keras.InputSpec`, and Keras
re-checks it at every call: a `ValueError` naming the layer, on every
backend, in eager calls and while `fit`/`predict` trace their compiled step.

**Values** (finiteness, symmetry, non-negativity) cannot raise inside
compiled code (`tf.function`, `jax.jit`). kzoo uses one mechanism on every
backend:

- in an eager call with `check_values=True` (the default), a `ValueError`
  naming the layer, what it expected and the offending batch indices. This
  copies one boolean per example to the host per call. PyTorch runs `fit`
  eagerly, so on a GPU it is one synchronization per step there: pass
  `check_values=False` to skip it on a hot path;
- in compiled code, or with `check_values=False`, the outputs of the
  offending examples are NaN. The NaN reaches the loss and the metrics, so
  the failure is visible; it is never a plausible finite answer. The other
  examples of the batch are computed as usual.

Layers that clamp instead (e.g. `LogEig` floors eigenvalues at
`min_eigenvalue`) say so in their docstrings.
"""

import keras
import numpy as np
from keras import ops

from kzoo import backend


def check_nonempty(layer, x, axes, what):
    """Raises `ValueError` if one of `x`'s static `axes` has size 0.

    An empty batch is fine (an empty answer); an example with no time steps
    or no pixels has no meaningful output.
    """
    shape = tuple(x.shape)
    if any(shape[axis] == 0 for axis in axes):
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) expects {what}; got shape {shape}."
        )


def float_inputs(layer, x):
    """`x`, cast to the layer's compute dtype if it is not floating (int images)."""
    if keras.backend.is_float_dtype(x.dtype):
        return x
    return ops.cast(x, layer.compute_dtype)


def finite_examples(x):
    """`(batch,)` booleans: whether each example of `x` is all finite."""
    finite = ops.isfinite(x)
    if len(x.shape) == 1:
        return finite
    return ops.all(finite, axis=tuple(range(1, len(x.shape))))


def enforce(layer, valid, expected):
    """Raises `ValueError` if `valid` (`(batch,)` booleans) is concrete and not all true.

    Does nothing for traced tensors or when `layer.check_values` is false; the
    caller then makes the invalid examples' outputs NaN with `poison`.

    Args:
        layer: the calling layer (its name and class appear in the message).
        valid: per-example validity.
        expected: what the layer expects, e.g. `"finite, symmetric matrices"`.
    """
    if not getattr(layer, "check_values", True) or not backend.is_concrete(valid):
        return
    bad = np.flatnonzero(~np.asarray(ops.convert_to_numpy(valid), bool).reshape(-1))
    if bad.size:
        shown = ", ".join(str(i) for i in bad[:8]) + (", ..." if bad.size > 8 else "")
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) expects {expected}; batch "
            f"example(s) {shown} are not (pass check_values=False to get NaN outputs "
            "for them instead of this error)."
        )


def poison(outputs, valid):
    """`outputs` with every example where `valid` is false set to NaN."""
    valid = ops.reshape(valid, (-1,) + (1,) * (len(outputs.shape) - 1))
    return ops.where(valid, outputs, ops.cast(float("nan"), outputs.dtype))


def checked(layer, outputs, valid, expected):
    """`enforce` then `poison`: the layer's outputs under its value contract."""
    enforce(layer, valid, expected)
    return poison(outputs, valid)

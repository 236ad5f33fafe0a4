"""An explosion-safe GRU: the candidate's recurrent weight kept below a spectral norm.

Kanai et al. (2017) trace GRU gradient explosions to bifurcations of the
recurrent dynamics; keeping the spectral norm of the candidate's recurrent
weight `U_h` below a threshold (docs/equations.md §S7: σ_max(U_h) < 2, our reading
of the analysis around the `h = 0` fixed point with gates near 0.5) keeps
training away from them. kzoo projects `U_h` after every update by clipping its
singular values (`clip_spectral_norm`), as a Keras constraint
(`CandidateSpectralNorm`) that every Keras optimizer applies after its update
— in `fit` and in `optimizer.apply_gradients` — plus an explicit `project()`
for loops that update the weights themselves.

`StableGRUCell` / `StableGRU` are `keras.layers.GRUCell` / `keras.layers.GRU`
with that constraint, so while the constraint is inactive they compute exactly
what Keras' GRU computes (on TensorFlow with a GPU, the cuDNN kernel included).
"""

import keras
from keras import ops

from kzoo.layers import contracts

DEFAULT_MAX_SINGULAR_VALUE = 2.0


def spectral_norm(matrix):
    """The largest singular value of a matrix."""
    return ops.max(ops.svd(matrix, compute_uv=False))


def clip_spectral_norm(matrix, max_value):
    """Projects `matrix` onto `{W : σ_max(W) ≤ max_value}`.

    Singular values above `max_value` are set to it (the Frobenius-nearest
    matrix in the set); a matrix already inside is returned unchanged.

    Example:

    >>> w = clip_spectral_norm(3.0 * np.eye(2), 2.0)
    >>> np.allclose(ops.convert_to_numpy(w), 2.0 * np.eye(2))
    True
    """
    u, s, vt = ops.svd(matrix, full_matrices=False)
    clipped = ops.matmul(u * ops.minimum(s, max_value), vt)
    return ops.where(ops.max(s) > max_value, clipped, matrix)


@keras.saving.register_keras_serializable(package="kzoo")
class CandidateSpectralNorm(keras.constraints.Constraint):
    """Constrains the candidate block of a GRU recurrent kernel to σ_max ≤ `max_value`.

    Keras' GRU recurrent kernel is `(units, 3 units)`, blocks `[U_z, U_r, U_h]`;
    only `U_h` (the candidate's) is projected.

    Args:
        max_value: the spectral-norm threshold.
    """

    def __init__(self, max_value=DEFAULT_MAX_SINGULAR_VALUE):
        self.max_value = max_value

    def __call__(self, w):
        units = w.shape[0]
        if w.shape[-1] != 3 * units:
            raise ValueError(
                f"CandidateSpectralNorm expects a GRU recurrent kernel of shape "
                f"(units, 3 * units); got {tuple(w.shape)}."
            )
        candidate = clip_spectral_norm(w[:, 2 * units :], self.max_value)
        return ops.concatenate([w[:, : 2 * units], ops.cast(candidate, w.dtype)], axis=-1)

    def get_config(self):
        return {"max_value": self.max_value}


def _with_constraint(layer_name, max_singular_value, kwargs):
    if kwargs.get("recurrent_constraint") is not None:
        raise ValueError(
            f"{layer_name} sets its own recurrent_constraint (the spectral-norm projection); "
            f"got recurrent_constraint={kwargs['recurrent_constraint']!r}."
        )
    if not max_singular_value > 0:
        raise ValueError(f"{layer_name}: max_singular_value must be > 0; got {max_singular_value}.")
    return {**kwargs, "recurrent_constraint": CandidateSpectralNorm(max_singular_value)}


def _config(config, max_singular_value):
    config.pop("recurrent_constraint", None)
    return {**config, "max_singular_value": max_singular_value}


@keras.saving.register_keras_serializable(package="kzoo")
class StableGRUCell(keras.layers.GRUCell):
    """`keras.layers.GRUCell` whose candidate recurrent weight keeps σ_max ≤ a threshold.

    Args:
        units: dimensionality of the state.
        max_singular_value: threshold on σ_max(U_h) (default 2).
        **kwargs: the arguments of `keras.layers.GRUCell` except
            `recurrent_constraint`.

    Example:

    >>> layer = keras.layers.RNN(StableGRUCell(8))
    >>> tuple(layer(np.zeros((2, 5, 3))).shape)
    (2, 8)
    """

    def __init__(self, units, max_singular_value=DEFAULT_MAX_SINGULAR_VALUE, **kwargs):
        super().__init__(units, **_with_constraint("StableGRUCell", max_singular_value, kwargs))
        self.max_singular_value = max_singular_value

    def build(self, input_shape):
        super().build(input_shape)
        # Keras' cell would fail later with a backend matmul error.
        self.input_spec = keras.InputSpec(ndim=2, axes={-1: input_shape[-1]})

    def project(self):
        """Applies the projection now (for loops without a Keras optimizer)."""
        kernel = self.recurrent_kernel
        kernel.assign(kernel.constraint(kernel))

    def get_config(self):
        return _config(super().get_config(), self.max_singular_value)


@keras.saving.register_keras_serializable(package="kzoo")
class StableGRU(keras.layers.GRU):
    """`keras.layers.GRU` whose candidate recurrent weight keeps σ_max ≤ a threshold.

    Args:
        units: dimensionality of the state.
        max_singular_value: threshold on σ_max(U_h) (default 2).
        check_values: raise a `ValueError` on non-finite sequences in eager
            calls (`kzoo.layers.contracts`); their outputs are NaN either way.
        **kwargs: the arguments of `keras.layers.GRU` except
            `recurrent_constraint`.

    Contract: `(batch, time, features)`, at least one step, features fixed at
    build, finite values (Keras' GRU would saturate an inf into a finite
    state).

    Example:

    >>> tuple(StableGRU(8, return_sequences=True)(np.zeros((2, 5, 3))).shape)
    (2, 5, 8)
    """

    def __init__(
        self, units, max_singular_value=DEFAULT_MAX_SINGULAR_VALUE, check_values=True, **kwargs
    ):
        super().__init__(units, **_with_constraint("StableGRU", max_singular_value, kwargs))
        self.max_singular_value = max_singular_value
        self.check_values = bool(check_values)

    def build(self, sequences_shape, initial_state_shape=None):
        super().build(sequences_shape, initial_state_shape)
        # Keras' GRU would fail later with a backend matmul error.
        self.input_spec = keras.InputSpec(ndim=3, axes={-1: sequences_shape[-1]})

    def call(self, sequences, initial_state=None, mask=None, training=False):
        # Keras' GRU saturates an inf input into a finite state: refuse it
        # (eager) or make that sequence's outputs NaN (compiled).
        contracts.check_nonempty(self, sequences, (1,), "at least one time step")
        valid = contracts.finite_examples(sequences)
        contracts.enforce(self, valid, "finite sequences")
        outputs = super().call(sequences, initial_state=initial_state, mask=mask, training=training)
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(contracts.poison(o, valid) for o in outputs)
        return contracts.poison(outputs, valid)

    def project(self):
        """Applies the projection now (for loops without a Keras optimizer)."""
        kernel = self.cell.recurrent_kernel
        kernel.assign(kernel.constraint(kernel))

    def get_config(self):
        return {
            **_config(super().get_config(), self.max_singular_value),
            "check_values": self.check_values,
        }

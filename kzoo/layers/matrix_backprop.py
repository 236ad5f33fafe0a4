"""Structured layers by matrix backpropagation (Ionescu et al., 2015).

Second-order pooling, the log-tangent map of SPD matrices (LogEig), matrix
powers and square roots, and a normalized-cuts layer. Every spectral function
`Y = U f(diag λ) Uᵀ` of a symmetric matrix `X = U diag(λ) Uᵀ` is
differentiated in the Daleckii–Krein form (docs/equations.md §S5)

    ∂L/∂X = U [K ⊙ (Uᵀ sym(∂L/∂Y) U)] Uᵀ,
    K_ij = (f(λ_i) − f(λ_j)) / (λ_i − λ_j),   K_ii = f'(λ_i),

with the divided difference replaced by `f'` at the midpoint where two
eigenvalues are (relatively) closer than `eps^(1/3)` of the dtype, so equal or
nearly equal eigenvalues give exact, finite gradients. Autodiff of
`keras.ops.eigh` divides by `λ_i − λ_j` there and returns NaN (JAX, PyTorch)
or drops the coupling terms (TensorFlow).

The algorithms are pure `keras.ops` functions (`covariance_pooling`,
`matrix_log`, `matrix_power`, `newton_schulz_sqrt`,
`leading_eigenspace_projector`, `normalized_cut`, `upper_triangle`); the
layers wrap them. Matrix products use the `@` operator and elementwise
maxima `ops.where`: in Keras 3.15 `ops.matmul` and `ops.maximum` turn float64
into float32 on PyTorch, and these layers compute in float64 when given it.
Inputs in float16/bfloat16 are computed in float32 (an
eigendecomposition in half precision is not meaningful), so under mixed
precision these layers return float32.
"""

import math

import keras
import numpy as np
from keras import ops

from kzoo import backend
from kzoo.layers import contracts


def _as_float(x):
    x = ops.convert_to_tensor(x)
    return ops.cast(x, _spectral_dtype(x.dtype))


def _floor(x, value):
    """`maximum(x, value)`, keeping float64 on PyTorch (see the module notes)."""
    return ops.where(x > value, x, value)


def _check_matrices(x, name):
    """Raises `ValueError` unless `x` is a (batch of) square matrices."""
    shape = tuple(x.shape)
    if len(shape) < 2 or shape[-1] != shape[-2] or shape[-1] is None:
        raise ValueError(f"{name} expects square matrices of shape (..., n, n); got shape {shape}.")


def valid_symmetric(matrix):
    """`(...)` booleans: each matrix is finite and symmetric.

    Symmetric means `max |X − Xᵀ| <= 100 √eps · max |X|` for the dtype's eps.
    Computed on the device, without a host copy.
    """
    matrix = _as_float(matrix)
    finite = ops.all(ops.isfinite(matrix), axis=(-2, -1))
    safe = ops.where(ops.isfinite(matrix), matrix, ops.zeros_like(matrix))
    scale = ops.max(ops.abs(safe), axis=(-2, -1), initial=0.0)  # initial: empty batches
    asymmetry = ops.max(ops.abs(safe - ops.swapaxes(safe, -1, -2)), axis=(-2, -1), initial=0.0)
    eps = float(np.finfo(keras.backend.standardize_dtype(matrix.dtype)).eps)
    return finite & (asymmetry <= 100.0 * eps**0.5 * _floor(scale, 1e-30))


def _guarded(matrix, fn):
    """`fn(matrix)` for finite symmetric matrices, NaN for the others.

    Invalid matrices are replaced by the identity before `fn` (so no
    eigendecomposition ever sees a NaN, which PyTorch's raises on), and their
    results by NaN: a wrong input never yields a plausible finite answer.
    """
    valid = valid_symmetric(matrix)
    mask = valid[..., None, None]
    identity = ops.eye(matrix.shape[-1], dtype=matrix.dtype)
    outputs = fn(ops.where(mask, matrix, identity))
    return ops.where(mask, outputs, ops.cast(float("nan"), outputs.dtype))


def _symmetrize(x):
    return 0.5 * (x + ops.swapaxes(x, -1, -2))


def _reconstruct(u, values):
    """`U diag(values) Uᵀ` for batches."""
    return (u * ops.expand_dims(values, -2)) @ ops.swapaxes(u, -1, -2)


def divided_differences(eigenvalues, fn, derivative):
    """The Daleckii–Krein matrix `K` of a spectral function, gap-safe.

    Args:
        eigenvalues: `(..., n)` eigenvalues.
        fn: the scalar function `f`, elementwise on tensors.
        derivative: its derivative `f'`.

    Returns:
        `(..., n, n)`: `(f(λ_i) − f(λ_j)) / (λ_i − λ_j)`, and `f'` at the
        midpoint where `|λ_i − λ_j| ≤ eps^(1/3) · max(|λ_i|, |λ_j|)`.
    """
    dtype = keras.backend.standardize_dtype(eigenvalues.dtype)
    tolerance = float(np.finfo(dtype).eps) ** (1.0 / 3.0)
    tiny = float(np.finfo(dtype).tiny)
    li = ops.expand_dims(eigenvalues, -1)
    lj = ops.expand_dims(eigenvalues, -2)
    gap = li - lj
    close = ops.abs(gap) <= tolerance * _floor(
        ops.where(ops.abs(li) > ops.abs(lj), ops.abs(li), ops.abs(lj)), tiny
    )
    quotient = (fn(li) - fn(lj)) / ops.where(close, ops.ones_like(gap), gap)
    return ops.where(close, derivative(0.5 * (li + lj)), quotient)


def spectral_function(matrix, fn, kernel):
    """`U f(diag λ) Uᵀ` of symmetric matrices, with Daleckii–Krein gradients.

    Args:
        matrix: `(..., n, n)` symmetric matrices.
        fn: `f`, applied to the eigenvalues.
        kernel: `kernel(eigenvalues) -> K`, the `(..., n, n)` matrix of the
            backward pass (`divided_differences` for smooth `f`).

    Returns:
        `(..., n, n)` symmetric matrices.
    """

    @backend.custom_gradient
    def apply(x):
        eigenvalues, u = ops.eigh(x)
        ut = ops.swapaxes(u, -1, -2)

        def grad(upstream):
            inner = ut @ _symmetrize(upstream) @ u
            return u @ (kernel(eigenvalues) * inner) @ ut

        return _reconstruct(u, fn(eigenvalues)), grad

    return apply(_symmetrize(matrix))


def matrix_log(matrix, min_eigenvalue=1e-6):
    """The log-tangent map `U diag(log max(λ, m)) Uᵀ` of SPD matrices.

    Eigenvalues below `min_eigenvalue` are clamped to it (their gradient is
    zero there), which keeps rank-deficient inputs finite.

    Example:

    >>> y = matrix_log(np.diag([1.0, np.e, np.e ** 2]))
    >>> np.allclose(ops.convert_to_numpy(y), np.diag([0.0, 1.0, 2.0]))
    True
    """
    matrix = _as_float(matrix)
    _check_matrices(matrix, "matrix_log")

    def fn(lam):
        return ops.log(_floor(lam, min_eigenvalue))

    def derivative(lam):
        return ops.where(lam > min_eigenvalue, 1.0 / _floor(lam, min_eigenvalue), 0.0)

    return _guarded(
        matrix,
        lambda m: spectral_function(m, fn, lambda lam: divided_differences(lam, fn, derivative)),
    )


def matrix_power(matrix, power, min_eigenvalue=1e-6):
    """`U diag(max(λ, m)^p) Uᵀ` of SPD matrices (e.g. `p = 1/2`: the square root).

    Example:

    >>> y = matrix_power(np.diag([4.0, 9.0]), 0.5)
    >>> np.allclose(ops.convert_to_numpy(y), np.diag([2.0, 3.0]))
    True
    """
    matrix = _as_float(matrix)
    _check_matrices(matrix, "matrix_power")

    def fn(lam):
        return ops.power(_floor(lam, min_eigenvalue), power)

    def derivative(lam):
        slope = power * ops.power(_floor(lam, min_eigenvalue), power - 1.0)
        return ops.where(lam > min_eigenvalue, slope, 0.0)

    return _guarded(
        matrix,
        lambda m: spectral_function(m, fn, lambda lam: divided_differences(lam, fn, derivative)),
    )


def newton_schulz_sqrt(matrix, iterations=5, inverse=False):
    """Matrix square root (or inverse square root) by Newton–Schulz iterations.

    iSQRT-COV: `A = X / tr(X)`, `Y₀ = A`, `Z₀ = I`, then
    `T = ½(3I − Z Y)`, `Y ← Y T`, `Z ← T Z`; `Y → A^½` and `Z → A^-½`, so
    `X^½ ≈ √tr(X) · Y` and `X^-½ ≈ Z / √tr(X)`. Only matrix products: it is
    differentiated by plain autodiff and runs well on accelerators. It
    converges for SPD inputs, the slower the smaller `λ_min / tr(X)`; a few
    iterations give an approximation, which is what iSQRT-COV trains with.

    Args:
        matrix: `(..., n, n)` SPD matrices.
        iterations: number of iterations.
        inverse: return `X^-½` instead of `X^½`.
    """
    matrix = _as_float(matrix)
    _check_matrices(matrix, "newton_schulz_sqrt")
    n = matrix.shape[-1]
    identity = ops.eye(n, dtype=matrix.dtype)

    def iterate(x):
        trace = ops.trace(x, axis1=-2, axis2=-1)[..., None, None]
        y = x / trace
        z = ops.broadcast_to(identity, ops.shape(x))
        for _ in range(iterations):
            t = 0.5 * (3.0 * identity - z @ y)
            y, z = y @ t, t @ z
        # Z Y has the eigenvalues p_i of the iteration, each in [0, 1] for a
        # PSD input; a negative eigenvalue drives its p_i below 0 and away.
        residual = ops.sum(ops.square(z @ y - identity), axis=(-2, -1))
        converged = (trace[..., 0, 0] > 0) & (residual <= n)
        result = z / ops.sqrt(trace) if inverse else y * ops.sqrt(trace)
        return ops.where(converged[..., None, None], result, ops.cast(float("nan"), result.dtype))

    return _guarded(matrix, iterate)


def covariance_pooling(features, epsilon=1e-3, center=True):
    """Second-order pooling `Σ = FᵀF/N + εI` (or centred) of feature maps.

    Args:
        features: `(batch, ..., channels)`; all middle axes are positions.
        epsilon: ridge added to the diagonal, making `Σ` positive definite.
        center: subtract the mean feature first (a covariance).

    Returns:
        `(batch, channels, channels)`.
    """
    features = _as_float(features)
    channels = features.shape[-1]
    positions = -1 if None in features.shape[1:-1] else math.prod(features.shape[1:-1])
    flat = ops.reshape(features, (ops.shape(features)[0], positions, channels))
    if center:
        flat = flat - ops.mean(flat, axis=1, keepdims=True)
    positions = ops.cast(ops.shape(flat)[1], flat.dtype)
    gram = ops.swapaxes(flat, 1, 2) @ flat / positions
    return gram + epsilon * ops.eye(channels, dtype=flat.dtype)


def upper_triangle(matrix, scale_off_diagonal=True):
    """The upper triangle of symmetric matrices as vectors.

    Off-diagonal entries are scaled by √2 by default, so the vector's
    Euclidean norm is the matrix's Frobenius norm.

    Returns:
        `(..., n (n + 1) / 2)`.
    """
    n = matrix.shape[-1]
    rows, cols = np.triu_indices(n)
    flat = ops.reshape(matrix, (*ops.shape(matrix)[:-2], n * n))
    vector = ops.take(flat, rows * n + cols, axis=-1)
    if scale_off_diagonal:
        scale = np.where(rows == cols, 1.0, math.sqrt(2.0))
        vector = vector * ops.convert_to_tensor(scale, vector.dtype)
    return vector


def leading_eigenspace_projector(matrix, k, min_gap=1e-3):
    """`U_k U_kᵀ`, the projector on the `k` leading eigenvectors, gap-safe.

    The projector is the spectral function with `f = 1` on the `k` largest
    eigenvalues and `0` on the others, so it does not depend on the signs or
    the rotation of eigenvectors within the subspace, and its Daleckii–Krein
    kernel is `1/(λ_i − λ_j)` between a leading `i` and a trailing `j`, `0`
    otherwise. The denominator is floored at `min_gap`: where the `k`-th and
    `(k+1)`-th eigenvalues (nearly) coincide the subspace is not determined and
    the gradient stays finite instead of exploding.

    Args:
        matrix: `(..., n, n)` symmetric matrices.
        k: number of leading eigenvectors.
        min_gap: floor of the eigengap in the backward pass.
    """
    matrix = _as_float(matrix)
    _check_matrices(matrix, "leading_eigenspace_projector")
    n = matrix.shape[-1]
    if not 0 < k < n:
        raise ValueError(f"leading_eigenspace_projector needs 0 < k < n={n}; got k={k}.")
    leading = np.arange(n) >= n - k  # eigh sorts eigenvalues ascending
    across = ops.convert_to_tensor(leading[:, None] != leading[None, :], "bool")

    def fn(lam):
        return ops.broadcast_to(ops.convert_to_tensor(leading, lam.dtype), ops.shape(lam))

    def kernel(lam):
        gap = ops.abs(ops.expand_dims(lam, -1) - ops.expand_dims(lam, -2))
        return ops.where(across, 1.0 / _floor(gap, min_gap), 0.0)

    return _guarded(matrix, lambda m: spectral_function(m, fn, kernel))


def normalized_affinity(features, bandwidth=1.0):
    """`D^-½ W D^-½` of the Gaussian affinity `W_ij = exp(−‖f_i − f_j‖² / 2σ²)`.

    Args:
        features: `(batch, n, channels)`.
        bandwidth: σ.
    """
    features = _as_float(features)
    squared = ops.sum(features * features, axis=-1)
    distances = (
        ops.expand_dims(squared, -1)
        + ops.expand_dims(squared, -2)
        - 2.0 * features @ ops.swapaxes(features, -1, -2)
    )
    affinity = ops.exp(-_floor(distances, 0.0) / (2.0 * bandwidth**2))
    scale = ops.rsqrt(ops.sum(affinity, axis=-1))
    return affinity * ops.expand_dims(scale, -1) * ops.expand_dims(scale, -2)


def normalized_cut(features, num_segments, bandwidth=1.0, min_gap=1e-3):
    """Soft partition of positions by normalized cuts (Shi & Malik; Ionescu et al.).

    The `num_segments` leading eigenvectors of the normalized affinity span
    the relaxed partition; its projector `P = U_k U_kᵀ` (`P_ij` large when
    positions `i` and `j` fall in the same segment) is invariant to the
    eigenvectors' signs and rotations, so a loss such as `‖P − P*‖²` against
    the ideal partition's projector is well defined.

    Args:
        features: `(batch, n, channels)`.
        num_segments: number of leading eigenvectors.
        bandwidth: σ of the Gaussian affinity.
        min_gap: eigengap floor of the backward pass.

    Returns:
        `(batch, n, n)` projectors.
    """
    return leading_eigenspace_projector(
        normalized_affinity(features, bandwidth), num_segments, min_gap
    )


def _check_rank(layer, input_shape, rank, what):
    if len(input_shape) not in rank:
        raise ValueError(
            f"{layer.__class__.__name__} expects {what}; got shape {tuple(input_shape)}."
        )


def _check_features(layer, input_shape):
    """Features `(batch, positions..., channels)`: rank 3 or 4, known channels, and
    at least one position; fixed for later calls by an `InputSpec`."""
    _check_rank(
        layer,
        input_shape,
        (3, 4),
        "features of shape (batch, positions, channels) or (batch, H, W, channels)",
    )
    if input_shape[-1] is None:
        raise ValueError(f"{layer.__class__.__name__} needs a known number of channels.")
    if 0 in input_shape[1:-1]:
        raise ValueError(
            f"{layer.__class__.__name__} needs at least one position; got "
            f"shape {tuple(input_shape)}."
        )
    layer.input_spec = keras.InputSpec(ndim=len(input_shape), axes={-1: input_shape[-1]})


def _check_square_batch(layer, input_shape):
    _check_rank(layer, input_shape, (3,), "symmetric matrices of shape (batch, n, n)")
    if input_shape[-1] is None or input_shape[-1] != input_shape[-2]:
        raise ValueError(
            f"{layer.__class__.__name__} expects square matrices (batch, n, n); "
            f"got shape {tuple(input_shape)}."
        )
    n = input_shape[-1]
    layer.input_spec = keras.InputSpec(ndim=3, axes={-2: n, -1: n})


@keras.saving.register_keras_serializable(package="kzoo")
class SecondOrderPooling(keras.layers.Layer):
    """Second-order (covariance) pooling of a feature map's positions.

    Args:
        epsilon: ridge `εI` added to the pooled matrix.
        center: pool the covariance (mean removed) rather than `FᵀF/N`.

    Contract: `(batch, positions, channels)` or `(batch, H, W, channels)`,
    at least one position, channels fixed at build. Non-finite features give
    non-finite matrices (they propagate; the next spectral layer turns them
    into NaN outputs or a `ValueError`).

    Example:

    >>> pooled = SecondOrderPooling()(np.random.rand(2, 8, 8, 16))
    >>> tuple(pooled.shape)
    (2, 16, 16)
    """

    def __init__(self, epsilon=1e-3, center=True, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.center = center

    def build(self, input_shape):
        _check_features(self, input_shape)

    def call(self, inputs):
        contracts.check_nonempty(
            self, inputs, range(1, len(inputs.shape) - 1), "at least one position"
        )
        return covariance_pooling(inputs, self.epsilon, self.center)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1], input_shape[-1])

    def compute_output_spec(self, inputs):
        shape = self.compute_output_shape(inputs.shape)
        return keras.KerasTensor(shape, _spectral_dtype(inputs.dtype))

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "center": self.center}


def _spectral_dtype(dtype):
    dtype = keras.backend.standardize_dtype(dtype)
    return dtype if dtype in ("float32", "float64") else "float32"


class _SpectralLayer(keras.layers.Layer):
    """A layer mapping `(batch, n, n)` symmetric matrices to the same shape.

    Contract (see `kzoo.layers.contracts`): `n` is fixed at build; matrices
    must be finite and symmetric (`ValueError` in eager calls, NaN outputs
    for the offending matrices in compiled code or with `check_values=False`).
    """

    def __init__(self, check_values=True, **kwargs):
        super().__init__(**kwargs)
        self.check_values = bool(check_values)

    def build(self, input_shape):
        _check_square_batch(self, input_shape)

    def _checked_input(self, inputs):
        contracts.enforce(self, valid_symmetric(inputs), "finite, symmetric matrices")
        return _as_float(inputs)

    def get_config(self):
        return {**super().get_config(), "check_values": self.check_values}

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(inputs.shape, _spectral_dtype(inputs.dtype))


@keras.saving.register_keras_serializable(package="kzoo")
class LogEig(_SpectralLayer):
    """Log-tangent map `log X = U diag(log λ) Uᵀ` of SPD matrices (O2P's LogEig).

    The backward pass is the gap-safe Daleckii–Krein form, exact and finite
    for repeated eigenvalues.

    Contract: `(batch, n, n)` finite, symmetric matrices (`n` fixed at build).
    Eigenvalues below `min_eigenvalue` (zero or negative: not SPD) are
    clamped to it, a documented clamp, not an error.

    Args:
        min_eigenvalue: eigenvalues are clamped to at least this.
        check_values: raise a `ValueError` on invalid matrices in eager calls
            (`kzoo.layers.contracts`); their outputs are NaN either way.

    Example:

    >>> x = SecondOrderPooling()(np.random.rand(2, 8, 8, 4))
    >>> tuple(LogEig()(x).shape)
    (2, 4, 4)
    """

    def __init__(self, min_eigenvalue=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.min_eigenvalue = min_eigenvalue

    def call(self, inputs):
        return matrix_log(self._checked_input(inputs), self.min_eigenvalue)

    def get_config(self):
        return {**super().get_config(), "min_eigenvalue": self.min_eigenvalue}


@keras.saving.register_keras_serializable(package="kzoo")
class MatrixPower(_SpectralLayer):
    """`X^p` of SPD matrices, by eigendecomposition or Newton–Schulz iterations.

    Args:
        power: the exponent `p`. `method="newton_schulz"` supports `0.5` and
            `-0.5` only.
        method: `"eigh"` (exact, Daleckii–Krein backward) or
            `"newton_schulz"` (matrix products only, autodiff backward).
        iterations: Newton–Schulz iterations.
        min_eigenvalue: `"eigh"` clamps eigenvalues to at least this.
        check_values: raise a `ValueError` on invalid matrices in eager calls
            (`kzoo.layers.contracts`); their outputs are NaN either way.

    Contract: `(batch, n, n)` finite, symmetric matrices (`n` fixed at
    build). `"eigh"` clamps eigenvalues below `min_eigenvalue`.
    `"newton_schulz"` needs a positive trace and converges for PSD matrices;
    where the iteration diverges (`‖ZY − I‖²_F > n`, which a PSD input never
    reaches) the output is NaN (and a `ValueError` in eager calls). Small
    negative eigenvalues do not make it diverge within a few iterations;
    those directions are not square-rooted exactly.

    Example:

    >>> x = SecondOrderPooling()(np.random.rand(2, 8, 8, 4))
    >>> tuple(MatrixPower(0.5, method="newton_schulz")(x).shape)
    (2, 4, 4)
    """

    def __init__(self, power, method="eigh", iterations=5, min_eigenvalue=1e-6, **kwargs):
        super().__init__(**kwargs)
        if method not in ("eigh", "newton_schulz"):
            raise ValueError(
                f"{self.__class__.__name__}: method must be 'eigh' or 'newton_schulz'; "
                f"got {method!r}."
            )
        if method == "newton_schulz" and power not in (0.5, -0.5):
            raise ValueError(
                f"{self.__class__.__name__}: Newton–Schulz computes powers 0.5 and -0.5 "
                f"only; got power={power}."
            )
        self.power = power
        self.method = method
        self.iterations = iterations
        self.min_eigenvalue = min_eigenvalue

    def call(self, inputs):
        inputs = self._checked_input(inputs)
        if self.method == "eigh":
            return matrix_power(inputs, self.power, self.min_eigenvalue)
        outputs = newton_schulz_sqrt(inputs, self.iterations, inverse=self.power < 0)
        contracts.enforce(
            self,
            contracts.finite_examples(outputs),
            "positive semi-definite matrices with a positive trace "
            "(the Newton–Schulz iteration diverged)",
        )
        return outputs

    def get_config(self):
        return {
            **super().get_config(),
            "power": self.power,
            "method": self.method,
            "iterations": self.iterations,
            "min_eigenvalue": self.min_eigenvalue,
        }


@keras.saving.register_keras_serializable(package="kzoo")
class MatrixSqrt(MatrixPower):
    """`X^½` of SPD matrices; `MatrixPower(0.5, ...)`.

    Example:

    >>> y = MatrixSqrt(method="eigh")(np.diag([4.0, 9.0])[None])
    >>> np.allclose(ops.convert_to_numpy(y), np.diag([2.0, 3.0]))
    True
    """

    def __init__(self, method="eigh", iterations=5, min_eigenvalue=1e-6, **kwargs):
        kwargs.pop("power", None)
        super().__init__(0.5, method, iterations, min_eigenvalue, **kwargs)


@keras.saving.register_keras_serializable(package="kzoo")
class UpperTriangle(keras.layers.Layer):
    """Flattens symmetric matrices `(batch, n, n)` to their upper triangles.

    Args:
        scale_off_diagonal: scale off-diagonal entries by √2 (the vector's
            norm is then the matrix's Frobenius norm).
        check_values: raise a `ValueError` on invalid matrices in eager calls
            (`kzoo.layers.contracts`); their outputs are NaN either way.

    Contract: `(batch, n, n)` finite, symmetric matrices (an asymmetric one,
    or a NaN below the diagonal, would be lost silently, so it is an error /
    NaN instead).

    Example:

    >>> tuple(UpperTriangle()(np.eye(4)[None]).shape)
    (1, 10)
    """

    def __init__(self, scale_off_diagonal=True, check_values=True, **kwargs):
        super().__init__(**kwargs)
        self.scale_off_diagonal = scale_off_diagonal
        self.check_values = bool(check_values)

    def build(self, input_shape):
        _check_square_batch(self, input_shape)

    def call(self, inputs):
        inputs = contracts.float_inputs(self, inputs)
        # An asymmetric matrix, or a NaN below the diagonal, would be dropped silently.
        return contracts.checked(
            self,
            upper_triangle(inputs, self.scale_off_diagonal),
            valid_symmetric(inputs),
            "finite, symmetric matrices",
        )

    def compute_output_shape(self, input_shape):
        n = input_shape[-1]
        return (input_shape[0], n * (n + 1) // 2)

    def get_config(self):
        return {
            **super().get_config(),
            "scale_off_diagonal": self.scale_off_diagonal,
            "check_values": self.check_values,
        }


@keras.saving.register_keras_serializable(package="kzoo")
class NormalizedCut(keras.layers.Layer):
    """Normalized-cuts layer: the soft partition of positions by their features.

    Builds the Gaussian affinity of the positions' features, normalizes it
    (`D^-½ W D^-½`) and returns the projector on its `num_segments` leading
    eigenvectors, `(batch, n, n)`, differentiable with a gap-safe eigenvector
    backward (see `leading_eigenspace_projector`).

    Args:
        num_segments: number of leading eigenvectors (segments).
        bandwidth: σ of the affinity `exp(−‖f_i − f_j‖² / 2σ²)`.
        min_gap: eigengap floor of the backward pass.
        check_values: raise a `ValueError` on non-finite features in eager
            calls (`kzoo.layers.contracts`); their outputs are NaN either way.

    Contract: `(batch, H, W, channels)` or `(batch, positions, channels)`
    finite features, the shape fixed at build.

    Example:

    >>> p = NormalizedCut(2)(np.random.rand(1, 4, 4, 3))
    >>> tuple(p.shape)
    (1, 16, 16)
    """

    def __init__(self, num_segments, bandwidth=1.0, min_gap=1e-3, check_values=True, **kwargs):
        super().__init__(**kwargs)
        self.num_segments = num_segments
        self.bandwidth = bandwidth
        self.min_gap = min_gap
        self.check_values = bool(check_values)

    def build(self, input_shape):
        _check_features(self, input_shape)
        self.input_spec = keras.InputSpec(shape=(None, *input_shape[1:]))
        positions = math.prod(input_shape[1:-1]) if None not in input_shape[1:-1] else None
        if positions is None or not 0 < self.num_segments < positions:
            raise ValueError(
                f"NormalizedCut needs a known number of positions larger than "
                f"num_segments={self.num_segments}; got shape {tuple(input_shape)}."
            )

    def call(self, inputs):
        positions = math.prod(inputs.shape[1:-1])
        features = ops.reshape(inputs, (ops.shape(inputs)[0], positions, inputs.shape[-1]))
        valid = contracts.finite_examples(features)
        contracts.enforce(self, valid, "finite features")
        features = ops.where(valid[:, None, None], features, ops.zeros_like(features))
        projector = normalized_cut(features, self.num_segments, self.bandwidth, self.min_gap)
        return contracts.poison(projector, valid)

    def compute_output_shape(self, input_shape):
        positions = math.prod(input_shape[1:-1])
        return (input_shape[0], positions, positions)

    def compute_output_spec(self, inputs):
        shape = self.compute_output_shape(inputs.shape)
        return keras.KerasTensor(shape, _spectral_dtype(inputs.dtype))

    def get_config(self):
        return {
            **super().get_config(),
            "num_segments": self.num_segments,
            "bandwidth": self.bandwidth,
            "min_gap": self.min_gap,
            "check_values": self.check_values,
        }

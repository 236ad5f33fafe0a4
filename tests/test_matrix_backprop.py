"""Tests of the matrix-backprop layers (docs/equations.md §S5), on every backend.

References are independent: scipy's `logm`, `sqrtm`, `fractional_matrix_power`
and numpy's `eigh` for values, central finite differences of those scipy
functions (float64) for gradients, including matrices with repeated
eigenvalues, where autodiff of `keras.ops.eigh` fails.
"""

import contextlib

import keras
import numpy as np
import pytest
import scipy.linalg as sl
from absl.testing import parameterized
from keras import ops

from kzoo.compat import TestCase
from kzoo.layers import matrix_backprop as mb
from tests import helpers

pytestmark = pytest.mark.multibackend


def _rotation(n, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return q


def _spd(eigenvalues, seed=0):
    q = _rotation(len(eigenvalues), seed)
    return (q * np.asarray(eigenvalues, "float64")) @ q.T


def _rank_deficient_covariance():
    features = np.random.default_rng(3).normal(size=(2, 4))  # 2 samples in 4-d
    return np.cov(features, rowvar=False, bias=True) + 1e-2 * np.eye(4)


MATRICES = {
    "random": _spd([0.5, 1.0, 2.0, 4.0]),
    "repeated_diagonal": np.diag([1.0, 1.0, 2.0, 2.0]),
    "identity_block": _spd([1.0, 1.0, 1.0, 3.0], seed=1),
    "nearly_equal": _spd([1.0, 1.0 + 1e-7, 2.0, 3.0], seed=2),
    "rank_deficient_plus_eps": _rank_deficient_covariance(),
}
FUNCTIONS = {
    "log": (mb.matrix_log, lambda x: sl.logm(x).real),
    "sqrt": (lambda x: mb.matrix_power(x, 0.5), lambda x: sl.sqrtm(x).real),
    "inverse_sqrt": (
        lambda x: mb.matrix_power(x, -0.5),
        lambda x: sl.fractional_matrix_power(x, -0.5).real,
    ),
}
TOLERANCE = {"float32": 3e-3, "float64": 1e-6}


def _precision(dtype):
    """JAX computes in float64 only inside `enable_x64`."""
    if dtype == "float64" and keras.backend.backend() == "jax":
        import jax

        return jax.enable_x64(True)
    return contextlib.nullcontext()


def _finite_difference_gradient(fn, x, weights, h=1e-5):
    """Gradient of `sum(weights * fn(X))` along symmetric perturbations of `X`."""
    n = len(x)
    grad = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            e = np.zeros((n, n))
            e[i, j] += 0.5
            e[j, i] += 0.5
            grad[i, j] = (np.sum(weights * fn(x + h * e)) - np.sum(weights * fn(x - h * e))) / (
                2 * h
            )
    return grad


def _gradient(fn, x, weights, dtype):
    def loss(a):
        return ops.sum(fn(a) * ops.convert_to_tensor(weights, dtype))

    return helpers.gradients(loss, x.astype(dtype))[0]


def _naive_log(a):
    """Autodiff through `keras.ops.eigh`: what kzoo's backward replaces."""
    eigenvalues, u = ops.eigh(a)
    return ops.matmul(u * ops.expand_dims(ops.log(eigenvalues), -2), ops.swapaxes(u, -1, -2))


def _close(actual, expected, tolerance):
    scale = max(np.max(np.abs(expected)), 1.0)
    return np.all(np.isfinite(actual)) and np.max(np.abs(actual - expected)) <= tolerance * scale


class SpectralFunctionTest(TestCase):
    @parameterized.product(
        function=sorted(FUNCTIONS), matrix=sorted(MATRICES), dtype=["float32", "float64"]
    )
    def test_forward_matches_scipy(self, function, matrix, dtype):
        fn, reference = FUNCTIONS[function]
        x = MATRICES[matrix]
        with _precision(dtype):
            y = fn(ops.convert_to_tensor(x, dtype))
            self.assertEqual(keras.backend.standardize_dtype(y.dtype), dtype)
            expected = reference(x)
            tolerance = TOLERANCE[dtype] * (10 if function == "inverse_sqrt" else 1)
            self.assertTrue(_close(ops.convert_to_numpy(y), expected, tolerance))

    @parameterized.product(
        function=sorted(FUNCTIONS), matrix=sorted(MATRICES), dtype=["float32", "float64"]
    )
    def test_gradient_matches_finite_differences(self, function, matrix, dtype):
        fn, reference = FUNCTIONS[function]
        x = MATRICES[matrix]
        weights = np.random.default_rng(7).normal(size=x.shape)
        expected = _finite_difference_gradient(reference, x, weights)
        with _precision(dtype):
            grad = _gradient(fn, x, weights, dtype)
        tolerance = TOLERANCE[dtype] * (10 if function == "inverse_sqrt" else 1)
        self.assertTrue(np.all(np.isfinite(grad)))
        self.assertAllClose(grad, grad.T, atol=1e-6 * np.max(np.abs(grad)))
        self.assertTrue(
            _close(grad, expected, tolerance), f"max error {np.max(np.abs(grad - expected)):.3g}"
        )

    def test_autodiff_of_eigh_fails_where_kzoo_does_not(self):
        # At diag(1, 1, 2, 2) the derivative of log couples the equal
        # eigenvalues with 1/λ. Autodiff of eigh divides by their zero gap:
        # NaN on JAX and PyTorch, finite but wrong (couplings dropped, not
        # even symmetric) on TensorFlow; kzoo's divided differences are exact.
        x = MATRICES["repeated_diagonal"]
        weights = np.random.default_rng(7).normal(size=x.shape)
        expected = _finite_difference_gradient(lambda a: sl.logm(a).real, x, weights)
        naive = _gradient(_naive_log, x, weights, "float32")
        self.assertFalse(_close(naive, expected, 1e-2), f"autodiff of eigh gave {naive}")
        self.assertTrue(_close(_gradient(mb.matrix_log, x, weights, "float32"), expected, 1e-5))

    def test_min_eigenvalue_keeps_singular_input_finite(self):
        x = np.diag([0.0, 1.0, 2.0]).astype("float32")
        weights = np.ones((3, 3))
        y = ops.convert_to_numpy(mb.matrix_log(x, min_eigenvalue=1e-4))
        self.assertAllClose(np.diag(y), np.log([1e-4, 1.0, 2.0]), atol=1e-5)
        grad = _gradient(lambda a: mb.matrix_log(a, min_eigenvalue=1e-4), x, weights, "float32")
        self.assertTrue(np.all(np.isfinite(grad)))
        self.assertEqual(grad[0, 0], 0.0)  # clamped: no gradient

    @parameterized.parameters(5, 20)
    def test_newton_schulz_converges_to_sqrtm(self, iterations):
        x = MATRICES["random"].astype("float32")
        y = ops.convert_to_numpy(mb.newton_schulz_sqrt(x, iterations))
        inverse = ops.convert_to_numpy(mb.newton_schulz_sqrt(x, iterations, inverse=True))
        # Five iterations approximate (iSQRT-COV's regime); twenty converge.
        tolerance = 0.1 if iterations == 5 else 1e-4
        self.assertTrue(_close(y, sl.sqrtm(x.astype("float64")).real, tolerance))
        self.assertTrue(_close(inverse, sl.fractional_matrix_power(x, -0.5).real, tolerance))

    def test_newton_schulz_gradient_matches_finite_differences(self):
        x = MATRICES["random"]
        weights = np.random.default_rng(7).normal(size=x.shape)
        expected = _finite_difference_gradient(lambda a: sl.sqrtm(a).real, x, weights)
        grad = _gradient(lambda a: mb.newton_schulz_sqrt(a, 20), x, weights, "float32")
        self.assertTrue(_close(0.5 * (grad + grad.T), expected, 1e-3))

    def test_batches(self):
        x = np.stack([MATRICES["random"], MATRICES["identity_block"]])[None]  # (1, 2, 4, 4)
        y = ops.convert_to_numpy(mb.matrix_log(x.astype("float32")))
        self.assertEqual(y.shape, (1, 2, 4, 4))
        self.assertAllClose(y[0, 1], sl.logm(MATRICES["identity_block"]).real, atol=1e-5)

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "matrix_log expects square"):
            mb.matrix_log(np.ones((2, 3, 4), "float32"))
        # The pure functions never answer a non-symmetric or non-finite
        # matrix with a plausible number: NaN for that matrix only.
        batch = np.stack([np.array([[2.0, 1.0], [0.0, 2.0]]), np.eye(2), np.full((2, 2), np.nan)])
        y = ops.convert_to_numpy(mb.matrix_power(batch.astype("float32"), 0.5))
        self.assertTrue(np.all(np.isnan(y[0])) and np.all(np.isnan(y[2])))
        self.assertAllClose(y[1], np.eye(2))
        with self.assertRaisesRegex(ValueError, "0 < k < n"):
            mb.leading_eigenspace_projector(np.eye(3, dtype="float32"), 3)


def _np_normalized_cut(features, k, bandwidth):
    distances = ((features[:, None] - features[None]) ** 2).sum(-1)
    affinity = np.exp(-distances / (2 * bandwidth**2))
    d = affinity.sum(1) ** -0.5
    eigenvalues, u = np.linalg.eigh(affinity * d[:, None] * d[None])
    return u[:, -k:] @ u[:, -k:].T, eigenvalues


class OtherFunctionsTest(TestCase):
    @parameterized.parameters(True, False)
    def test_covariance_pooling(self, center):
        features = np.random.default_rng(0).normal(size=(2, 3, 5, 4)).astype("float32")
        pooled = ops.convert_to_numpy(mb.covariance_pooling(features, 1e-3, center))
        for b in range(2):
            flat = features[b].reshape(-1, 4).astype("float64")
            flat = flat - flat.mean(0) if center else flat
            self.assertAllClose(pooled[b], flat.T @ flat / 15 + 1e-3 * np.eye(4), atol=1e-5)

    def test_upper_triangle(self):
        x = _spd([1.0, 2.0, 3.0]).astype("float32")
        vector = ops.convert_to_numpy(mb.upper_triangle(x[None]))[0]
        self.assertEqual(vector.shape, (6,))
        self.assertAllClose(np.linalg.norm(vector), np.linalg.norm(x), atol=1e-5)
        plain = ops.convert_to_numpy(mb.upper_triangle(x[None], scale_off_diagonal=False))[0]
        self.assertAllClose(plain, x[np.triu_indices(3)])

    def test_normalized_cut_matches_numpy(self):
        features = np.random.default_rng(1).normal(size=(2, 12, 3))
        projector = ops.convert_to_numpy(mb.normalized_cut(features.astype("float32"), 3))
        for b in range(2):
            self.assertAllClose(projector[b], _np_normalized_cut(features[b], 3, 1.0)[0], atol=1e-4)

    def test_normalized_cut_gradient_matches_finite_differences(self):
        rng = np.random.default_rng(2)
        features = rng.normal(size=(10, 2))
        weights = rng.normal(size=(10, 10))
        self.assertGreater(np.diff(_np_normalized_cut(features, 2, 1.0)[1])[-2], 1e-2)

        def loss(f):
            return np.sum(weights * _np_normalized_cut(f, 2, 1.0)[0])

        h, expected = 1e-6, np.zeros_like(features)
        for index in np.ndindex(features.shape):
            e = np.zeros_like(features)
            e[index] = h
            expected[index] = (loss(features + e) - loss(features - e)) / (2 * h)
        with _precision("float64"):
            grad = helpers.gradients(
                lambda f: ops.sum(
                    mb.normalized_cut(f[None], 2) * ops.convert_to_tensor(weights, "float64")
                ),
                features,
            )[0]
        self.assertTrue(_close(grad, expected, 1e-6), f"{np.abs(grad - expected).max():.3g}")

    def test_projector_gradient_stays_finite_at_a_zero_gap(self):
        # The leading eigenvalue is double: the 1-d leading subspace is not
        # determined. Autodiff of eigh gives NaN (JAX, PyTorch) or drops terms
        # (TensorFlow); kzoo's gradient is finite, bounded by 1/min_gap.
        x = np.diag([0.1, 0.5, 1.0, 1.0]).astype("float32")
        weights = np.arange(16.0).reshape(4, 4)
        grad = _gradient(
            lambda a: mb.leading_eigenspace_projector(a, 1, min_gap=1e-3), x, weights, "float32"
        )
        self.assertTrue(np.all(np.isfinite(grad)))
        self.assertLessEqual(np.max(np.abs(grad)), np.max(np.abs(weights)) / 1e-3)
        # Away from the degenerate pair, the couplings are the exact 1/gap ones.
        self.assertAllClose(grad[0, 3], 0.5 * (weights[0, 3] + weights[3, 0]) / 0.9, rtol=1e-5)


def _spd_batch(batch=2, n=4, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(batch, n, 2 * n))
    return (a @ a.transpose(0, 2, 1) / (2 * n) + 0.1 * np.eye(n)).astype("float32")


class LayersTest(TestCase):
    def test_second_order_pooling(self):
        self.run_layer_test(
            mb.SecondOrderPooling,
            init_kwargs={"epsilon": 1e-2, "center": False},
            input_shape=(2, 5, 6, 3),
            expected_output_shape=(2, 3, 3),
            expected_num_trainable_weights=0,
            supports_masking=False,
        )

    @parameterized.parameters(
        (mb.LogEig, {"min_eigenvalue": 1e-5}),
        (mb.MatrixPower, {"power": -0.5}),
        (mb.MatrixPower, {"power": 0.5, "method": "newton_schulz", "iterations": 3}),
        (mb.MatrixSqrt, {"method": "eigh"}),
    )
    def test_spectral_layers(self, layer_cls, init_kwargs):
        self.run_layer_test(
            layer_cls,
            init_kwargs=init_kwargs,
            input_data=_spd_batch(),
            expected_output_shape=(2, 4, 4),
            expected_num_trainable_weights=0,
            supports_masking=False,
        )

    def test_upper_triangle_layer(self):
        self.run_layer_test(
            mb.UpperTriangle,
            init_kwargs={},
            input_data=_spd_batch(),
            expected_output_shape=(2, 10),
            supports_masking=False,
        )

    def test_normalized_cut_layer(self):
        self.run_layer_test(
            mb.NormalizedCut,
            init_kwargs={"num_segments": 2, "bandwidth": 2.0},
            input_shape=(2, 3, 4, 5),
            expected_output_shape=(2, 12, 12),
            supports_masking=False,
        )

    def test_matrix_sqrt_methods_agree(self):
        x = _spd_batch()
        eigh = mb.MatrixSqrt(method="eigh")(x)
        newton = mb.MatrixSqrt(method="newton_schulz", iterations=20)(x)
        self.assertAllClose(eigh, newton, atol=1e-4)
        config = mb.MatrixSqrt(method="newton_schulz").get_config()
        self.assertEqual(mb.MatrixSqrt.from_config(config).method, "newton_schulz")

    def test_layer_errors(self):
        with self.assertRaisesRegex(ValueError, "LogEig expects square"):
            mb.LogEig()(np.ones((2, 3, 4), "float32"))
        with self.assertRaisesRegex(ValueError, "LogEig expects symmetric matrices of shape"):
            mb.LogEig()(np.ones((3, 3), "float32"))
        with self.assertRaisesRegex(ValueError, r"LogEig\) expects finite, symmetric"):
            mb.LogEig()(np.triu(np.ones((1, 3, 3), "float32")))
        with self.assertRaisesRegex(ValueError, "SecondOrderPooling expects features"):
            mb.SecondOrderPooling()(np.ones((2, 3), "float32"))
        with self.assertRaisesRegex(ValueError, "Newton–Schulz computes powers 0.5"):
            mb.MatrixPower(2.0, method="newton_schulz")
        with self.assertRaisesRegex(ValueError, "method must be"):
            mb.MatrixSqrt(method="svd")
        with self.assertRaisesRegex(ValueError, "larger than num_segments"):
            mb.NormalizedCut(16)(np.ones((1, 4, 4, 2), "float32"))

    def test_o2p_head_trains_saves_and_runs_mixed_precision(self):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(32, 6, 6, 3)).astype("float32")
        y = rng.integers(0, 2, size=(32,))

        def model():
            inputs = keras.Input((6, 6, 3))
            h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
            h = mb.SecondOrderPooling()(h)
            h = mb.LogEig()(h)
            h = mb.UpperTriangle()(h)
            return keras.Model(inputs, keras.layers.Dense(2)(h))

        net = model()
        net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = net.fit(x, y, epochs=2, batch_size=8, verbose=0)
        self.assertTrue(np.all(np.isfinite(history.history["loss"])))
        path = self.get_temp_dir() + "/o2p.keras"
        net.save(path)
        restored = keras.saving.load_model(path)
        self.assertAllClose(net.predict(x, verbose=0), restored.predict(x, verbose=0), atol=1e-5)

        keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            mixed = model()
            mixed.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            history = mixed.fit(x, y, epochs=1, batch_size=8, verbose=0)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        self.assertTrue(np.isfinite(history.history["loss"][0]))

"""Tests of EM attention and HighwayEM (docs/equations.md §S4), on every backend."""

import os

import keras
import numpy as np
import pytest
from keras import ops

from kzoo.compat import TestCase
from kzoo.layers import em_attention as em
from tests import helpers

pytestmark = pytest.mark.multibackend


def _clustered(batch=2, n=60, channels=6, k=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, channels)) * 3
    x = centres[rng.integers(0, k, size=(batch, n))] + rng.normal(size=(batch, n, channels))
    mu = rng.normal(size=(k, channels))
    return x.astype("float32"), (mu / np.linalg.norm(mu, axis=-1, keepdims=True)).astype("float32")


class EMFunctionsTest(TestCase):
    def test_em_step_matches_numpy(self):
        x, mu = _clustered()
        z, new_mu = (ops.convert_to_numpy(t) for t in em.em_iterations(x, mu, 1))
        logits = x @ mu.T
        want_z = np.exp(logits - logits.max(-1, keepdims=True))
        want_z /= want_z.sum(-1, keepdims=True)
        self.assertAllClose(z, want_z, atol=1e-5)
        self.assertAllClose(z.sum(-1), np.ones(z.shape[:2]), atol=1e-5)  # responsibilities
        s = np.einsum("bnk,bnc->bkc", want_z / (1e-6 + want_z.sum(1, keepdims=True)), x)
        self.assertAllClose(new_mu, s / np.linalg.norm(s, axis=-1, keepdims=True), atol=1e-5)

    def test_generalized_em_never_decreases_the_likelihood(self):
        x, mu = _clustered(seed=1)
        for gamma in (1.0, 0.5, 0.2):
            current, values = mu, []
            for _ in range(8):
                _, current = em.em_iterations(x, current, 1, gamma=gamma)
                values.append(ops.convert_to_numpy(em.mixture_log_likelihood(x, current)))
            start = ops.convert_to_numpy(em.mixture_log_likelihood(x, np.stack([mu, mu])))
            values = np.stack([start, *values])
            self.assertTrue(np.all(np.diff(values, axis=0) >= -1e-4), (gamma, values))
            self.assertTrue(np.all(values[-1] > values[0] + 1e-2))

    def test_gradients_match_finite_differences(self):
        x, mu = _clustered(batch=1, n=12, channels=3, k=2)
        upstream = np.random.default_rng(3).normal(size=(1, 12, 3)).astype("float32")

        def loss(features):
            z, bases = em.em_iterations(features, mu, 3, gamma=0.5)
            return ops.sum(ops.multiply(ops.matmul(z, bases), upstream))

        (grad,) = helpers.gradients(loss, x)
        eps = 1e-2
        for index in [(0, 0, 0), (0, 5, 1), (0, 11, 2)]:
            plus, minus = x.copy(), x.copy()
            plus[index] += eps
            minus[index] -= eps
            numeric = (float(loss(plus)) - float(loss(minus))) / (2 * eps)
            self.assertAllClose(grad[index], numeric, rtol=3e-2, atol=3e-3)

    def test_stop_gradient_cuts_the_iterations(self):
        x, mu = _clustered(batch=1, n=8, channels=3, k=2)

        def loss(bases):
            z, final = em.em_iterations(x, bases, 3, stop_gradient=True)
            return ops.sum(ops.matmul(z, final))

        (grad,) = helpers.gradients(loss, mu)
        self.assertAllClose(grad, np.zeros_like(grad))


class EMLayersTest(TestCase):
    def test_em_attention_layer(self):
        self.run_layer_test(
            em.EMAttention,
            init_kwargs={"num_bases": 4, "iterations": 2},
            input_shape=(2, 6, 6, 8),
            expected_output_shape=(2, 6, 6, 8),
            expected_num_trainable_weights=5,
            expected_num_non_trainable_weights=3,
            supports_masking=False,
        )

    def test_highway_em_layer(self):
        self.run_layer_test(
            em.HighwayEM,
            init_kwargs={"num_bases": 4, "iterations": 4, "gamma": 0.3, "learnable_gamma": True},
            input_shape=(2, 6, 6, 8),
            expected_output_shape=(2, 6, 6, 8),
            expected_num_trainable_weights=6,
            expected_num_non_trainable_weights=3,
            supports_masking=False,
        )

    def test_gamma_one_is_unrolled_em_attention(self):
        x = np.random.default_rng(0).normal(size=(2, 5, 5, 8)).astype("float32")
        unrolled = em.EMAttention(4, 3, stop_gradient=False)
        highway = em.HighwayEM(4, 3, gamma=1.0)
        unrolled.build(x.shape)
        highway.build(x.shape)
        highway.set_weights(unrolled.get_weights())
        self.assertAllClose(highway(x), unrolled(x), atol=0)
        loss = lambda layer: lambda v: ops.sum(ops.square(layer(v, training=False)))  # noqa: E731
        self.assertAllClose(
            helpers.gradients(loss(highway), x)[0],
            helpers.gradients(loss(unrolled), x)[0],
            atol=1e-6,
        )

    def test_running_mean_of_bases_updates_in_fit_only(self):
        x = np.random.default_rng(1).normal(size=(8, 4, 4, 6)).astype("float32")
        layer = em.HighwayEM(3, 2, gamma=0.5, momentum=0.5)
        model = keras.Sequential([keras.Input((4, 4, 6)), layer])
        before = ops.convert_to_numpy(layer.bases).copy()
        model.predict(x, verbose=0)
        self.assertAllClose(ops.convert_to_numpy(layer.bases), before)
        model.compile("sgd", "mse")
        model.fit(x, x, epochs=1, batch_size=8, verbose=0)
        after = ops.convert_to_numpy(layer.bases)
        self.assertFalse(np.allclose(after, before))
        self.assertAllClose(np.linalg.norm(after, axis=-1), np.ones(3), atol=1e-5)

    def test_round_trip(self):
        x = np.random.default_rng(2).normal(size=(2, 4, 4, 6)).astype("float32")
        model = keras.Sequential(
            [
                keras.Input((4, 4, 6)),
                em.HighwayEM(3, 5, gamma=0.4, learnable_gamma=True),
                em.EMAttention(3, 2),
            ]
        )
        path = os.path.join(self.get_temp_dir(), "em.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        self.assertAllClose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)

    def test_bad_input(self):
        with self.assertRaisesRegex(ValueError, "num_bases"):
            em.EMAttention(num_bases=0)
        with self.assertRaisesRegex(ValueError, "iterations"):
            em.HighwayEM(iterations=0)
        with self.assertRaisesRegex(ValueError, "gamma"):
            em.HighwayEM(gamma=1.5)
        with self.assertRaisesRegex(ValueError, "em_bad.*height, width, channels"):
            em.EMAttention(name="em_bad")(np.zeros((2, 8, 3), "float32"))


_DATA_PARALLEL = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["KERAS_BACKEND"] = "jax"
import json, numpy as np, keras
from kzoo.layers import HighwayEM

def run(distributed):
    keras.utils.set_random_seed(0)
    if distributed:
        devices = keras.distribution.list_devices("cpu")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    x = np.random.default_rng(1).normal(size=(16, 4, 4, 6)).astype("float32")
    layer = HighwayEM(3, 2, gamma=0.5, momentum=0.5)
    model = keras.Sequential([keras.Input((4, 4, 6)), layer])
    model.compile("sgd", "mse")
    model.fit(x, x, epochs=2, batch_size=8, shuffle=False, verbose=0)
    keras.distribution.set_distribution(None)
    return np.asarray(layer.bases)

single, parallel = run(False), run(True)
print(json.dumps({"devices": len(keras.distribution.list_devices("cpu")),
                  "max_diff": float(np.abs(single - parallel).max())}))
"""


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="backend-independent (its own JAX process); run once",
)
def test_running_mean_is_the_global_batch_mean_under_data_parallel():
    """On 2 JAX CPU replicas the stored bases match a single-device run."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _DATA_PARALLEL],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["devices"] == 2
    assert result["max_diff"] < 1e-5

"""Tests of the explosion-safe GRU (docs/equations.md §S7), on every backend."""

import keras
import numpy as np
import pytest
from keras import ops

from kzoo.compat import TestCase
from kzoo.layers import stable_gru as sg

pytestmark = pytest.mark.multibackend
UNITS = 6


def _candidate_norm(layer):
    kernel = np.asarray(ops.convert_to_numpy(layer.cell.recurrent_kernel))
    return np.linalg.svd(kernel[:, 2 * UNITS :], compute_uv=False).max()


def _sequences(seed=0, batch=16, steps=12, features=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, steps, features)).astype("float32")
    return x, rng.normal(size=(batch, UNITS)).astype("float32")


class StableGRUTest(TestCase):
    def test_clip_spectral_norm_matches_numpy_svd(self):
        rng = np.random.default_rng(0)
        w = rng.normal(size=(5, 5)).astype("float32") * 2.0
        u, s, vt = np.linalg.svd(w)
        clipped = ops.convert_to_numpy(sg.clip_spectral_norm(w, 2.0))
        self.assertAllClose(clipped, (u * np.minimum(s, 2.0)) @ vt, atol=1e-5)
        inside = w / (s.max() / 1.5)
        self.assertAllClose(ops.convert_to_numpy(sg.clip_spectral_norm(inside, 2.0)), inside)
        self.assertAllClose(float(ops.convert_to_numpy(sg.spectral_norm(w))), s.max(), rtol=1e-5)

    def test_layer(self):
        self.run_layer_test(
            sg.StableGRU,
            init_kwargs={"units": 4, "max_singular_value": 1.5},
            input_shape=(2, 5, 3),
            expected_output_shape=(2, 4),
            expected_num_trainable_weights=3,
            supports_masking=True,
        )

    def test_equals_keras_gru_while_the_constraint_is_inactive(self):
        x, y = _sequences()
        keras.utils.set_random_seed(1)
        plain = keras.Sequential([keras.Input((12, 3)), keras.layers.GRU(UNITS)])
        keras.utils.set_random_seed(1)
        stable = keras.Sequential([keras.Input((12, 3)), sg.StableGRU(UNITS)])
        for a, b in zip(plain.get_weights(), stable.get_weights()):
            self.assertAllClose(a, b)
        self.assertAllClose(plain.predict(x, verbose=0), stable.predict(x, verbose=0))
        for model in (plain, stable):
            model.compile(keras.optimizers.SGD(0.01), "mse")
            model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        self.assertLess(_candidate_norm(stable.layers[0]), 2.0)
        for a, b in zip(plain.get_weights(), stable.get_weights()):
            self.assertAllClose(a, b, atol=1e-6)

    def test_fit_keeps_the_candidate_norm_below_the_threshold(self):
        x, y = _sequences(batch=32)
        norms = {}
        for name, layer in (
            ("plain", keras.layers.GRU(UNITS)),
            ("stable", sg.StableGRU(UNITS, max_singular_value=1.2)),
        ):
            keras.utils.set_random_seed(2)
            model = keras.Sequential([keras.Input((12, 3)), layer])
            model.compile(keras.optimizers.SGD(5.0), "mse")
            model.fit(x, 4.0 * y, batch_size=8, epochs=3, verbose=0)
            norms[name] = _candidate_norm(layer)
            gates = ops.convert_to_numpy(layer.cell.recurrent_kernel)[:, : 2 * UNITS]
            self.assertTrue(np.all(np.isfinite(gates)))
        self.assertGreater(norms["plain"], 1.2)  # the constraint had work to do
        self.assertLessEqual(norms["stable"], 1.2 + 1e-4)

    def test_project_for_custom_loops(self):
        cell = sg.StableGRUCell(UNITS, max_singular_value=2.0)
        layer = keras.layers.RNN(cell)
        layer(np.zeros((1, 2, 3), "float32"))
        kernel = np.random.default_rng(3).normal(size=(UNITS, 3 * UNITS)).astype("float32") * 3
        cell.recurrent_kernel.assign(kernel)
        cell.project()
        projected = ops.convert_to_numpy(cell.recurrent_kernel)
        self.assertAllClose(projected[:, : 2 * UNITS], kernel[:, : 2 * UNITS])
        self.assertAllClose(
            np.linalg.svd(projected[:, 2 * UNITS :], compute_uv=False).max(), 2.0, atol=1e-4
        )

    def test_keras_round_trip(self):
        inputs = keras.Input((None, 3))
        h = sg.StableGRU(UNITS, max_singular_value=1.7, return_sequences=True)(inputs)
        h = keras.layers.RNN(sg.StableGRUCell(UNITS, max_singular_value=1.3))(h)
        model = keras.Model(inputs, h)
        path = self.get_temp_dir() + "/stable_gru.keras"
        model.save(path)
        restored = keras.saving.load_model(path)
        x, _ = _sequences()
        self.assertAllClose(model.predict(x, verbose=0), restored.predict(x, verbose=0))
        self.assertEqual(restored.layers[1].max_singular_value, 1.7)
        self.assertEqual(restored.layers[2].cell.recurrent_kernel.constraint.max_value, 1.3)

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "sets its own recurrent_constraint"):
            sg.StableGRU(4, recurrent_constraint="non_neg")
        with self.assertRaisesRegex(ValueError, "max_singular_value must be > 0"):
            sg.StableGRUCell(4, max_singular_value=0.0)
        with self.assertRaisesRegex(ValueError, "expects a GRU recurrent kernel"):
            sg.CandidateSpectralNorm()(np.ones((4, 4), "float32"))

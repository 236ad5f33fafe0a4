"""Tests of the shared filter bases (docs/equations.md §S6), on every backend."""

import keras
import numpy as np
import pytest
from keras import ops

from kzoo import applications
from kzoo import regularizers
from kzoo.compat import TestCase
from kzoo.layers import shared_basis as sb

pytestmark = pytest.mark.multibackend


def _np_conv_same(x, kernel):
    """Cross-correlation with 'same' zero padding, stride 1, in numpy."""
    k = kernel.shape[0]
    pad = k // 2
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for dy in range(k):
        for dx in range(k):
            window = padded[:, dy : dy + x.shape[1], dx : dx + x.shape[2]]
            out += window @ kernel[dy, dx]
    return out


class SharedBasisTest(TestCase):
    def test_layer_is_the_convolution_with_the_composed_kernel(self):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(2, 7, 6, 4)).astype("float32")
        basis = sb.FilterBasis(5)
        layer = sb.SharedBasisConv2D(8, basis, num_unique=3)
        y = ops.convert_to_numpy(layer(x))
        b = ops.convert_to_numpy(basis.kernel)
        c = ops.convert_to_numpy(layer.coefficients)
        u = ops.convert_to_numpy(layer.unique_kernel)
        kernel = np.concatenate([np.einsum("hwis,sf->hwif", b, c), u], axis=-1)
        self.assertAllClose(y, _np_conv_same(x, kernel), atol=1e-4)
        self.assertAllClose(ops.convert_to_numpy(layer.equivalent_kernel()), kernel, atol=1e-5)
        strided = sb.SharedBasisConv2D(8, basis, strides=2)(x)
        self.assertEqual(tuple(strided.shape), (2, 4, 3, 8))

    def test_orthogonality_penalty_matches_numpy(self):
        rng = np.random.default_rng(1)
        kernel = rng.normal(size=(3, 3, 4, 6)).astype("float32")
        rows = kernel.reshape(-1, 6).T
        expected = np.mean((rows @ rows.T - np.eye(6)) ** 2)
        self.assertAllClose(
            ops.convert_to_numpy(regularizers.OrthogonalBasis(10.0)(kernel)),
            10.0 * expected,
            rtol=1e-5,
        )
        q = np.linalg.qr(rng.normal(size=(36, 6)))[0].reshape(3, 3, 4, 6)
        self.assertAllClose(ops.convert_to_numpy(sb.orthogonality_penalty(q)), 0.0, atol=1e-6)
        # Keras' OrthogonalRegularizer normalizes rows: it ignores their norms.
        scaled = 3.0 * q.astype("float32")
        keras_value = keras.regularizers.OrthogonalRegularizer(1.0, mode="rows")(
            scaled.reshape(-1, 6).T
        )
        self.assertAllClose(ops.convert_to_numpy(keras_value), 0.0, atol=1e-5)
        self.assertGreater(float(ops.convert_to_numpy(sb.orthogonality_penalty(scaled))), 1.0)

    def test_sharing_trains_one_basis_saves_it_once_and_survives_keras_round_trip(self):
        basis = sb.FilterBasis(4, kernel_regularizer=sb.OrthogonalBasis(1.0), name="basis")
        inputs = keras.Input((8, 8, 3))
        h = sb.SharedBasisConv2D(3, basis, name="first")(inputs)
        h = sb.SharedBasisConv2D(3, basis, num_unique=1, name="second")(h)
        model = keras.Model(inputs, h)
        self.assertLen(model.weights, 4)  # basis, 2 x coefficients, unique
        self.assertLen(model.losses, 1)  # the basis is regularized once
        x = np.random.default_rng(2).normal(size=(4, 8, 8, 3)).astype("float32")
        before = ops.convert_to_numpy(basis.kernel).copy()
        model.compile("sgd", "mse")
        model.fit(x, np.zeros((4, 8, 8, 3)), epochs=1, verbose=0)
        self.assertNotAllClose(before, ops.convert_to_numpy(basis.kernel))
        path = self.get_temp_dir() + "/shared.keras"
        model.save(path)
        restored = keras.saving.load_model(path)
        self.assertIs(restored.get_layer("first").basis, restored.get_layer("second").basis)
        self.assertAllClose(model.predict(x, verbose=0), restored.predict(x, verbose=0))

    def test_layer_test(self):
        self.run_layer_test(
            sb.SharedBasisConv2D,
            init_kwargs={
                "filters": 6,
                "basis": sb.FilterBasis(4),
                "num_unique": 2,
                "use_bias": True,
            },
            input_shape=(2, 5, 5, 3),
            expected_output_shape=(2, 5, 5, 6),
            expected_num_trainable_weights=4,
            supports_masking=False,
        )
        self.run_layer_test(
            sb.FilterBasis,
            init_kwargs={"num_filters": 4},
            input_shape=(2, 5, 5, 3),
            expected_output_shape=(2, 5, 5, 4),
            expected_num_trainable_weights=1,
            supports_masking=False,
        )

    def test_errors(self):
        basis = sb.FilterBasis(4)
        sb.SharedBasisConv2D(4, basis)(np.zeros((1, 5, 5, 3), "float32"))
        with self.assertRaisesRegex(ValueError, "was built for 3 input channels; got 4"):
            sb.SharedBasisConv2D(4, basis)(np.zeros((1, 5, 5, 4), "float32"))
        with self.assertRaisesRegex(ValueError, "expects a FilterBasis"):
            sb.SharedBasisConv2D(4, "basis")
        with self.assertRaisesRegex(ValueError, "num_unique < filters"):
            sb.SharedBasisConv2D(4, basis, num_unique=4)
        with self.assertRaisesRegex(ValueError, "expects images"):
            sb.SharedBasisConv2D(4, sb.FilterBasis(2))(np.zeros((1, 5, 3), "float32"))

    def test_resnet_shares_one_basis_per_stage(self):
        shared = applications.SharedBasisResNet(widths=(8, 16), blocks_per_stage=2)
        unshared = applications.SharedBasisResNet(shared=False, widths=(8, 16), blocks_per_stage=2)
        convs = [layer for layer in shared.layers if isinstance(layer, sb.SharedBasisConv2D)]
        self.assertLen(convs, 4 + 3)
        self.assertLen({id(c.basis) for c in convs}, 2)
        self.assertLess(shared.count_params(), unshared.count_params())
        self.assertLen(shared.losses, 2)
        self.assertEqual(shared.output_shape, unshared.output_shape)

"""Tests of the layer-normalized RNN family (docs/equations.md §S1), on every backend."""

import os

import keras
import numpy as np
import pytest
from absl.testing import parameterized

from kzoo import layers as kl
from kzoo.compat import TestCase
from tests import helpers

pytestmark = pytest.mark.multibackend

LAYERS = {
    "lstm": (kl.LayerNormLSTM, helpers.np_ln_lstm, 9),
    "gru": (kl.LayerNormGRU, helpers.np_ln_gru, 11),
    "simple": (kl.LayerNormSimpleRNN, helpers.np_ln_simple_rnn, 4),
}

# JAX computes in float32 unless x64 is enabled; PyTorch's float64 layer
# norm and recurrences agree with numpy to ~1e-7 only.
_FLOAT64_TOLERANCE = {"tensorflow": 1e-9, "torch": 1e-6}.get(keras.backend.backend(), 2e-5)


def _randomize(layer, seed=0):
    """Non-trivial values for every weight, gains and biases included."""
    rng = np.random.default_rng(seed)
    layer.set_weights(
        [
            rng.normal(size=w.shape) * (0.5 if w.ndim == 2 else 0.3) + (w.ndim == 1) * 0.2
            for w in layer.get_weights()
        ]
    )
    return [w.astype("float64") for w in layer.get_weights()]


def _call(layer, x):
    return keras.ops.convert_to_numpy(layer(x))


class LayerNormRNNTest(TestCase):
    @parameterized.named_parameters(("lstm", "lstm"), ("gru", "gru"), ("simple", "simple"))
    def test_run_layer_test(self, kind):
        layer_cls, _, n_weights = LAYERS[kind]
        self.run_layer_test(
            layer_cls,
            init_kwargs={"units": 3, "dropout": 0.2, "recurrent_dropout": 0.2, "seed": 1},
            input_shape=(3, 4, 5),
            call_kwargs={"training": True},
            expected_output_shape=(3, 3),
            expected_num_trainable_weights=n_weights,
            expected_num_non_trainable_weights=0,
            expected_num_seed_generators=1,
            supports_masking=True,
        )
        self.run_layer_test(
            layer_cls,
            init_kwargs={
                "units": 2,
                "return_sequences": True,
                "kernel_regularizer": "l2",
                "recurrent_regularizer": "l2",
            },
            input_shape=(2, 3, 4),
            expected_output_shape=(2, 3, 2),
            expected_num_losses=2,
            expected_num_trainable_weights=n_weights,
            supports_masking=True,
        )

    def test_cells_inside_keras_rnn(self):
        for cell_cls in (kl.LayerNormLSTMCell, kl.LayerNormGRUCell, kl.LayerNormSimpleRNNCell):
            self.run_layer_test(
                keras.layers.RNN,
                init_kwargs={"cell": cell_cls(4), "return_sequences": True},
                input_shape=(2, 3, 5),
                expected_output_shape=(2, 3, 4),
                custom_objects={cell_cls.__name__: cell_cls},
                supports_masking=True,
            )

    @parameterized.named_parameters(("lstm", "lstm"), ("gru", "gru"), ("simple", "simple"))
    def test_matches_numpy_reference(self, kind):
        layer_cls, reference, _ = LAYERS[kind]
        x = np.random.default_rng(1).normal(size=(3, 6, 5))
        layer = layer_cls(4, return_sequences=True, return_state=True)
        layer(x.astype("float32"))
        weights = _randomize(layer)
        outputs = [keras.ops.convert_to_numpy(o) for o in layer(x.astype("float32"))]
        expected = reference(x, weights, layer.norm_epsilon)
        self.assertEqual(len(outputs), len(expected))
        for got, want in zip(outputs, expected):
            self.assertAllClose(got, want, atol=2e-5, rtol=1e-4)

    def test_pure_layer_norm(self):
        x = np.random.default_rng(2).normal(size=(4, 7)) * 3 + 1
        gamma, beta = np.linspace(0.5, 2, 7), np.linspace(-1, 1, 7)
        got = kl.layer_norm(
            keras.ops.convert_to_tensor(x.astype("float32")),
            gamma.astype("float32"),
            beta.astype("float32"),
            1e-5,
        )
        self.assertAllClose(got, helpers.np_layer_norm(x, gamma, beta, 1e-5), atol=1e-5)

    def test_zero_mean_layer_norm_of_a_centered_product(self):
        # LN(x W) per column group = zero_mean_layer_norm(x center_kernel(W)),
        # values (numpy) and gradients (autodiff of the textbook layer_norm),
        # in float64 and float32.
        from kzoo.layers.layer_norm_rnn import center_kernel
        from kzoo.layers.layer_norm_rnn import zero_mean_layer_norm

        rng = np.random.default_rng(4)
        x, w = rng.normal(size=(3, 5)), rng.normal(size=(5, 12)) + 2.0
        gamma, beta, weights = rng.normal(size=12), rng.normal(size=12), rng.normal(size=(3, 12))
        groups = (8, 4)

        def normalized(kernel, gamma, beta, fast, epsilon=1e-3):
            if fast:
                kernel = center_kernel(kernel, groups)
                norm = zero_mean_layer_norm
            else:
                norm = kl.layer_norm
            z = keras.ops.matmul(keras.ops.convert_to_tensor(x, kernel.dtype), kernel)
            return keras.ops.concatenate(
                [
                    norm(z[:, :8], gamma[:8], beta[:8], epsilon),
                    norm(z[:, 8:], gamma[8:], beta[8:], epsilon),
                ],
                axis=-1,
            )

        expected = np.concatenate(
            [
                helpers.np_layer_norm(x @ w[:, :8], gamma[:8], beta[:8], 1e-3),
                helpers.np_layer_norm(x @ w[:, 8:], gamma[8:], beta[8:], 1e-3),
            ],
            axis=-1,
        )
        for dtype, tolerance in (("float64", _FLOAT64_TOLERANCE), ("float32", 2e-5)):
            args = [a.astype(dtype) for a in (w, gamma, beta)]
            got = normalized(*[keras.ops.convert_to_tensor(a) for a in args], fast=True)
            self.assertAllClose(got, expected, atol=tolerance * 10, rtol=tolerance * 10)

            def loss(*tensors, fast):
                out = normalized(*tensors, fast=fast)
                return keras.ops.sum(out * keras.ops.convert_to_tensor(weights, out.dtype))

            fast = helpers.gradients(lambda *t: loss(*t, fast=True), *args)
            textbook = helpers.gradients(lambda *t: loss(*t, fast=False), *args)
            for got, want in zip(fast, textbook):
                self.assertAllClose(got, want, atol=tolerance * 100, rtol=tolerance * 100)
        self.assertAllClose(
            center_kernel(np.arange(6.0).reshape(1, 6), (4, 2)), [[-1.5, -0.5, 0.5, 1.5, -0.5, 0.5]]
        )

    @parameterized.named_parameters(("lstm", "lstm"), ("gru", "gru"), ("simple", "simple"))
    def test_layer_gradients_match_the_textbook_cell(self, kind):
        # The sequence layers center their kernels and normalize with
        # zero_mean_layer_norm (hand-written gradients on TF and JAX); a cell
        # inside keras.layers.RNN runs the textbook step. Same gradients.
        layer_cls = LAYERS[kind][0]
        x = np.random.default_rng(5).normal(size=(2, 4, 3))
        fast = layer_cls(3, return_sequences=True, dtype="float64")
        textbook = keras.layers.RNN(
            layer_cls.cell_class(3, dtype="float64"), return_sequences=True, dtype="float64"
        )
        fast(x)
        textbook(x)
        weights = _randomize(fast)
        textbook.set_weights(weights)
        readout = np.random.default_rng(6).normal(size=(2, 4, 3))

        def gradients(layer):
            def loss(*values):
                seeds = [keras.ops.convert_to_tensor(v) for v in layer.non_trainable_variables]
                out, _ = layer.stateless_call(list(values), seeds, keras.ops.convert_to_tensor(x))
                return keras.ops.sum(out * keras.ops.convert_to_tensor(readout, out.dtype))

            return helpers.gradients(loss, *weights)

        for got, want in zip(gradients(fast), gradients(textbook)):
            self.assertAllClose(got, want, atol=_FLOAT64_TOLERANCE, rtol=_FLOAT64_TOLERANCE)

    @parameterized.named_parameters(("lstm", "lstm"), ("gru", "gru"))
    def test_invariances_of_table_1(self, kind):
        # LN(W v) is unchanged when W or v is rescaled and when one vector is
        # added to every output column of W (paper Table 1, eq. 6-7).
        layer_cls = LAYERS[kind][0]
        rng = np.random.default_rng(3)
        x = rng.normal(size=(2, 5, 4)).astype("float32")
        layer = layer_cls(3, norm_epsilon=1e-9)
        layer(x)
        weights = _randomize(layer)
        base = _call(layer, x)
        kernel, recurrent = weights[0], weights[1]
        shift = rng.normal(size=(kernel.shape[0], 1)).astype("float32")
        for transformed_x, kernels in (
            (x, (kernel * 7.5, recurrent)),
            (x, (kernel, recurrent * 0.2)),
            (x * 4.0, (kernel, recurrent)),
            (x, (kernel + shift, recurrent)),
        ):
            layer.set_weights(list(kernels) + weights[2:])
            self.assertAllClose(_call(layer, transformed_x), base, atol=2e-5, rtol=2e-5)

    def test_simple_rnn_invariant_to_joint_rescaling(self):
        x = np.random.default_rng(4).normal(size=(2, 5, 4)).astype("float32")
        layer = kl.LayerNormSimpleRNN(3, norm_epsilon=1e-9)
        layer(x)
        weights = _randomize(layer)
        base = _call(layer, x)
        layer.set_weights([weights[0] * 3.0, weights[1] * 3.0] + weights[2:])
        self.assertAllClose(_call(layer, x), base, atol=2e-5)
        layer.set_weights([weights[0] * 3.0, weights[1]] + weights[2:])
        self.assertGreater(np.abs(_call(layer, x) - base).max(), 1e-3)

    def test_plain_lstm_lacks_the_invariances(self):
        x = np.random.default_rng(5).normal(size=(2, 5, 4)).astype("float32")
        layer = keras.layers.LSTM(3)
        base = _call(layer, x)
        kernel, recurrent, bias = layer.get_weights()
        shift = np.ones((kernel.shape[0], 1), "float32")
        for transformed_x, kernels in (
            (x, (kernel * 7.5, recurrent)),
            (x, (kernel, recurrent * 0.2)),
            (x * 4.0, (kernel, recurrent)),
            (x, (kernel + shift, recurrent)),
        ):
            layer.set_weights(list(kernels) + [bias])
            self.assertGreater(np.abs(_call(layer, transformed_x) - base).max(), 1e-3)

    @parameterized.named_parameters(("lstm", "lstm"), ("gru", "gru"), ("simple", "simple"))
    def test_gradients_flow_through_100_steps(self, kind):
        keras.utils.set_random_seed(0)
        layer = LAYERS[kind][0](8)
        x = np.random.default_rng(6).normal(size=(2, 100, 3)).astype("float32")
        layer(x)
        weights = [keras.ops.convert_to_numpy(w) for w in layer.trainable_variables]
        state = [keras.ops.convert_to_numpy(v) for v in layer.non_trainable_variables]

        def loss(*args):
            outputs, _ = layer.stateless_call(list(args[:-1]), state, args[-1])
            return keras.ops.sum(outputs)

        grads = helpers.gradients(loss, *weights, x)
        for weight, grad in zip(layer.trainable_variables, grads):
            self.assertTrue(np.isfinite(grad).all(), weight.path)
            self.assertGreater(np.abs(grad).max(), 1e-6, weight.path)
        self.assertTrue(np.isfinite(grads[-1]).all())

    def test_ln_lstm_carries_more_gradient_to_the_first_step(self):
        # What the normalization is for: at the same initialization seed the
        # gradient of the last output w.r.t. the first input is orders of
        # magnitude larger than through a plain LSTM.
        x = np.random.default_rng(6).normal(size=(2, 100, 3)).astype("float32")
        first_step = {}
        for layer_cls in (kl.LayerNormLSTM, keras.layers.LSTM):
            keras.utils.set_random_seed(1)
            layer = layer_cls(8)
            layer(x)
            (grad,) = helpers.gradients(lambda i: keras.ops.sum(layer(i)), x)
            self.assertTrue(np.isfinite(grad).all())
            first_step[layer_cls] = np.abs(grad[:, 0]).max()
        self.assertGreater(first_step[kl.LayerNormLSTM], 100 * first_step[keras.layers.LSTM])

    def test_masking_skips_padded_steps(self):
        x = np.random.default_rng(7).normal(size=(2, 6, 3)).astype("float32")
        padded = np.concatenate([x[:, :4], np.zeros((2, 2, 3), "float32")], axis=1)
        layer = kl.LayerNormLSTM(4)
        model = keras.Sequential([keras.Input((6, 3)), keras.layers.Masking(0.0), layer])
        self.assertAllClose(model(padded), layer(x[:, :4]), atol=1e-6)

    def test_go_backwards_and_stateful(self):
        x = np.random.default_rng(8).normal(size=(2, 6, 3)).astype("float32")
        forward = kl.LayerNormGRU(4, return_sequences=True)
        forward(x)
        backward = kl.LayerNormGRU(4, go_backwards=True)
        backward(x)
        backward.set_weights(forward.get_weights())
        self.assertAllClose(backward(x), forward(x[:, ::-1])[:, -1], atol=1e-6)

        stateful = kl.LayerNormLSTM(4, stateful=True)
        stateful(x[:, :3])
        stateful.reset_states()
        whole = kl.LayerNormLSTM(4)
        whole(x)
        whole.set_weights(stateful.get_weights())
        stateful(x[:, :3])
        self.assertAllClose(stateful(x[:, 3:]), whole(x), atol=1e-6)

    @parameterized.named_parameters(("lstm", "lstm"), ("gru", "gru"), ("simple", "simple"))
    def test_projecting_the_whole_sequence_matches_stepping(self, kind):
        # precompute_inputs=True projects every time step at once; a cell
        # inside keras.layers.RNN projects step by step. Same masks (dropout, padding),
        # same direction, same numbers.
        layer_cls = LAYERS[kind][0]
        x = np.random.default_rng(3).normal(size=(3, 6, 5)).astype("float32")
        x[0, 4:] = 0.0
        args = {"dropout": 0.3, "recurrent_dropout": 0.3, "seed": 5}
        rnn_args = {"return_sequences": True, "go_backwards": True}
        hoisted = layer_cls(4, precompute_inputs=True, **args, **rnn_args)
        stepped = keras.layers.RNN(layer_cls.cell_class(4, **args), **rnn_args)
        hoisted(x)
        stepped(x)
        stepped.set_weights(_randomize(hoisted))
        mask = keras.ops.convert_to_tensor(np.abs(x).sum(-1) > 0)
        for training in (False, True):
            self.assertAllClose(
                hoisted(x, mask=mask, training=training),
                stepped(x, mask=mask, training=training),
                atol=1e-5,
            )

    def test_dropout_only_in_training(self):
        x = np.ones((4, 5, 6), "float32")
        layer = kl.LayerNormLSTM(8, dropout=0.5, recurrent_dropout=0.5, seed=0)
        self.assertAllClose(layer(x), layer(x))
        self.assertGreater(
            np.abs(keras.ops.convert_to_numpy(layer(x, training=True)) - _call(layer, x)).max(),
            1e-4,
        )

    def test_keras_file_round_trip(self):
        x = np.random.default_rng(9).normal(size=(2, 5, 3)).astype("float32")
        inputs = keras.Input((5, 3))
        h = kl.LayerNormLSTM(4, return_sequences=True, norm_epsilon=1e-4)(inputs)
        h = kl.LayerNormGRU(4, return_sequences=True, precompute_inputs=True)(h)
        outputs = keras.layers.RNN(kl.LayerNormSimpleRNNCell(2))(h)
        model = keras.Model(inputs, outputs)
        path = os.path.join(self.get_temp_dir(), "model.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        self.assertAllClose(restored(x), model(x))
        self.assertEqual(restored.layers[1].norm_epsilon, 1e-4)
        self.assertIs(restored.layers[2].precompute_inputs, True)

    def test_mixed_precision(self):
        x = np.random.default_rng(10).normal(size=(2, 5, 3)).astype("float32")
        full = kl.LayerNormLSTM(4)
        full(x)
        mixed = kl.LayerNormLSTM(4, dtype="mixed_float16")
        mixed(x)
        mixed.set_weights(full.get_weights())
        out = mixed(x)
        self.assertEqual(keras.backend.standardize_dtype(out.dtype), "float16")
        self.assertAllClose(keras.ops.cast(out, "float32"), full(x), atol=2e-2)

    def test_bad_arguments_and_inputs(self):
        with self.assertRaisesRegex(ValueError, "units"):
            kl.LayerNormLSTM(0)
        with self.assertRaisesRegex(ValueError, "dropout"):
            kl.LayerNormGRUCell(3, dropout=1.5)
        with self.assertRaisesRegex(ValueError, "norm_epsilon"):
            kl.LayerNormSimpleRNN(3, norm_epsilon=0.0)
        with self.assertRaisesRegex(ValueError, "layer_norm_lstm.*ndim=3"):
            kl.LayerNormLSTM(3, name="layer_norm_lstm")(np.zeros((2, 4), "float32"))
        with self.assertRaisesRegex(ValueError, "LayerNormLSTMCell .* expects one time step"):
            kl.LayerNormLSTMCell(3).build((2, 5, 4))
        with self.assertRaisesRegex(ValueError, "LayerNormGRU: `precompute_inputs`"):
            kl.LayerNormGRU(3, precompute_inputs="yes")
        with self.assertRaisesRegex(TypeError, "unexpected arguments"):
            kl.LayerNormLSTM(3, bogus=1)

"""One bad row never poisons stored state: running statistics and the NaN row.

A NaN example in a training batch makes that step's loss NaN. What must not
happen is that it leaves a trace in state every later inference reads: the EM
layers' running bases, their batch-norm statistics, the weights (when the
optimizer skips non-finite steps). Keras' own `BatchNormalization` is poisoned
for good by one such batch; the test records that, as README documents it.
"""

import keras
import numpy as np
import pytest
from keras import ops

from kzoo.layers import FiniteBatchNormalization
from kzoo.layers import HighwayEM
from kzoo.layers import em_attention as em
from kzoo.optimizers import LSTMOptimizer

pytestmark = pytest.mark.multibackend


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6, 6, 4)).astype("float32")
    y = rng.integers(0, 3, size=32)
    poisoned = x.copy()
    poisoned[3, 1, 1, 0] = np.nan  # one value of one example
    return x, y, poisoned


def _em_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 4))
    h = keras.layers.Conv2D(8, 1)(inputs)
    h = HighwayEM(num_bases=4, iterations=2, name="hem")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


@pytest.mark.parametrize("optimizer", ["lstm_optimizer", "adam_skipping_non_finite"])
def test_a_nan_row_in_fit_leaves_the_model_finite(optimizer):
    x, y, poisoned = _data()
    model = _em_model()
    if optimizer == "lstm_optimizer":
        opt = LSTMOptimizer(output_scale=0.1)  # skips non-finite steps by itself
    else:  # Keras' way to skip non-finite steps for its own optimizers
        opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-2), initial_scale=1.0)
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(poisoned, y, batch_size=8, epochs=2, verbose=0)
    hem = model.get_layer("hem")
    for variable in model.variables:
        assert np.all(np.isfinite(ops.convert_to_numpy(variable))), variable.path
    assert not np.allclose(ops.convert_to_numpy(hem.norm.moving_mean), 0.0)  # it did learn
    assert np.all(np.isfinite(model.predict(x, verbose=0)))
    # The bad example itself is not hidden: its prediction is NaN.
    assert np.all(np.isnan(model.predict(poisoned[3:4], verbose=0)))


def test_running_bases_average_the_finite_examples_only():
    rng = np.random.default_rng(1)
    bases = rng.normal(size=(3, 5)).astype("float32")
    bases /= np.linalg.norm(bases, axis=-1, keepdims=True)
    batch = rng.normal(size=(4, 3, 5)).astype("float32")
    poisoned = batch.copy()
    poisoned[2, 0, 0] = np.inf
    got = ops.convert_to_numpy(em.running_bases(bases, poisoned, 0.9))
    mean = batch[[0, 1, 3]].mean(axis=0)
    expected = 0.9 * bases + 0.1 * mean
    expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    all_bad = np.full_like(batch, np.nan)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(em.running_bases(bases, all_bad, 0.9)), bases
    )


def test_finite_batch_norm_skips_what_keras_batch_norm_stores():
    x = np.random.default_rng(2).normal(size=(8, 3)).astype("float32")
    poisoned = x.copy()
    poisoned[0, 1] = np.nan
    keras_norm, finite_norm = keras.layers.BatchNormalization(), FiniteBatchNormalization()
    for norm in (keras_norm, finite_norm):
        norm(x, training=True)
        norm(poisoned, training=True)
    # Keras: the moving statistics are NaN from now on, for every input.
    assert np.all(np.isnan(ops.convert_to_numpy(keras_norm.moving_mean))[1])
    assert np.isnan(ops.convert_to_numpy(keras_norm(x, training=False))).any()
    # kzoo: the corrupt batch is skipped, the clean one counted, numbers as Keras'.
    reference = keras.layers.BatchNormalization()
    reference(x, training=True)
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(
            ops.convert_to_numpy(getattr(finite_norm, name)),
            ops.convert_to_numpy(getattr(reference, name)),
            rtol=1e-6,
        )
    config = finite_norm.get_config()
    assert (
        isinstance(
            keras.layers.deserialize(keras.layers.serialize(finite_norm)), FiniteBatchNormalization
        )
        and config["momentum"] == 0.99
    )

"""`GradientFlow` and the backend gradient helper, on every backend."""

import glob

import keras
import numpy as np
import pytest

from kzoo import backend
from kzoo.callbacks import GradientFlow

pytestmark = pytest.mark.multibackend


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(16, 5)).astype("float32"), rng.normal(size=(16, 3)).astype("float32")


def test_loss_gradients_match_the_analytic_gradient_and_leave_state_alone():
    x, y = _data()
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(3, name="dense"),
        ]
    )
    model.compile("sgd", "mse")
    model.layers[0].moving_mean.assign(np.full(5, 0.5, "float32"))
    state = [np.array(v) for v in model.non_trainable_variables]
    loss, grads = backend.loss_gradients(model, x, y)
    # Reference: training-mode batch norm (batch statistics), then the linear layer.
    h = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3)
    kernel, bias = (np.array(v) for v in model.layers[1].weights)
    residual = h @ kernel + bias - y
    np.testing.assert_allclose(loss, np.mean(residual**2), rtol=1e-5)
    names = [v.path.split("/", 1)[1] for v in model.trainable_variables]
    got = dict(zip(names, grads))
    np.testing.assert_allclose(
        got["dense/kernel"], 2 * h.T @ residual / residual.size, rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        got["dense/bias"], 2 * residual.sum(0) / residual.size, rtol=1e-4, atol=1e-6
    )
    for before, after in zip(state, model.non_trainable_variables):
        np.testing.assert_array_equal(before, np.array(after))


def test_flags_a_vanishing_layer_and_logs_in_fit(tmp_path):
    x, y = _data(1)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(8, activation="relu", name="first"),
            keras.layers.Dense(3, kernel_initializer="zeros", name="last"),
        ]
    )
    model.compile("sgd", "mse")
    callback = GradientFlow((x, y), log_dir=str(tmp_path), vanishing_threshold=1e-9)
    callback.set_model(model)
    norms, _ = callback.layer_gradient_norms()
    assert norms["first"] == 0.0 and norms["last"] > 0  # nothing flows past a zero kernel
    history = model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    assert len(callback.history) == 2
    assert history.history["grad_norm/vanishing_layers"][0] == 0  # it learns after one epoch
    assert history.history["grad_norm/first"][-1] > 0
    events = glob.glob(str(tmp_path / "gradient_flow" / "events.out.tfevents.*"))
    assert events
    import tensorflow as tf

    tags = set()
    for record in tf.data.TFRecordDataset(events):
        event = tf.compat.v1.Event.FromString(record.numpy())
        tags |= {value.tag for value in event.summary.value}
    assert {"grad_norm/first", "grad_norm/last", "gradients/first"} <= tags


def test_bad_arguments():
    with pytest.raises(ValueError, match="data"):
        GradientFlow(np.zeros(3))
    with pytest.raises(ValueError, match="every"):
        GradientFlow((np.zeros(3), np.zeros(3)), every=0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
    callback = GradientFlow(_data())
    callback.set_model(model)
    with pytest.raises(ValueError, match="compiled"):
        callback.layer_gradient_norms()

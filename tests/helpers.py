"""Test helpers: backend autodiff and an independent numpy reference of S1."""

import keras
import numpy as np


def gradients(fn, *args):
    """Gradients of the scalar `fn(*args)` with respect to each numpy arg."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(a) for a in args]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = fn(*tensors)
        grads = tape.gradient(value, tensors, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return [g.numpy() for g in grads]
    if backend == "jax":
        import jax

        return [np.asarray(g) for g in jax.grad(fn, argnums=tuple(range(len(args))))(*args)]
    import torch

    tensors = [torch.tensor(a, requires_grad=True) for a in args]
    value = fn(*tensors)
    if value.requires_grad:  # else nothing reaches the inputs
        value.backward()
    return [np.zeros_like(a) if t.grad is None else t.grad.numpy() for a, t in zip(args, tensors)]


def np_layer_norm(x, gamma, beta, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_ln_lstm(x, w, eps):
    """Runs the LN-LSTM equations of docs/equations.md §S1 over `x` (B, T, D)."""
    (kernel, recurrent, bias, kg, kb, rg, rb, sg, sb) = w
    units = recurrent.shape[0]
    h = np.zeros((x.shape[0], units))
    c = np.zeros_like(h)
    outputs = []
    for t in range(x.shape[1]):
        z = np_layer_norm(x[:, t] @ kernel, kg, kb, eps)
        z = z + np_layer_norm(h @ recurrent, rg, rb, eps) + bias
        i, f, g, o = np.split(z, 4, axis=-1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(np_layer_norm(c, sg, sb, eps))
        outputs.append(h)
    return np.stack(outputs, 1), h, c


def np_ln_gru(x, w, eps):
    (kernel, recurrent, bias, g1, b1, g2, b2, g3, b3, g4, b4) = w
    units = recurrent.shape[0]
    h = np.zeros((x.shape[0], units))
    outputs = []
    for t in range(x.shape[1]):
        xw = x[:, t] @ kernel
        hu = h @ recurrent
        gates = (
            np_layer_norm(xw[:, : 2 * units], g1, b1, eps)
            + np_layer_norm(hu[:, : 2 * units], g2, b2, eps)
            + bias
        )
        z, r = np.split(gates, 2, axis=-1)
        candidate = np.tanh(
            np_layer_norm(xw[:, 2 * units :], g3, b3, eps)
            + _sigmoid(r) * np_layer_norm(hu[:, 2 * units :], g4, b4, eps)
        )
        h = (1 - _sigmoid(z)) * h + _sigmoid(z) * candidate
        outputs.append(h)
    return np.stack(outputs, 1), h


def np_ln_simple_rnn(x, w, eps):
    kernel, recurrent, gamma, beta = w
    h = np.zeros((x.shape[0], recurrent.shape[0]))
    outputs = []
    for t in range(x.shape[1]):
        h = np.tanh(np_layer_norm(x[:, t] @ kernel + h @ recurrent, gamma, beta, eps))
        outputs.append(h)
    return np.stack(outputs, 1), h


def assert_texture_patch_preset_reproduces(name):
    """A texture-patches zoo preset scores its recorded test metrics."""
    from kzoo import applications
    from kzoo.datasets import texture_patches
    from kzoo.zoo import models
    from kzoo.zoo import presets

    model = applications.get(name, weights="pretrained")
    results = models.score(model, "texture_patches", verbose=0)
    recorded = presets.read_metadata(name)[1]["metrics"]["test"]
    np.testing.assert_allclose(results["accuracy"], recorded["accuracy"], atol=2e-3)
    np.testing.assert_allclose(results["loss"], recorded["loss"], rtol=1e-3)
    assert results["accuracy"] > 2.0 / texture_patches.NUM_CLASSES


def assert_texture_patch_preset_serves(name, tmp_path):
    """A texture-patches zoo preset exports and verifies in a TF-only process."""
    from kzoo import applications
    from kzoo import serving
    from kzoo.datasets import texture_patches

    model = applications.get(name, weights="pretrained")
    x, _ = texture_patches.load("test")
    path = serving.export(model, tmp_path, sample_inputs={"patch": x[:4]})
    report = serving.verify(path, model=model)
    assert report.ok, report
    assert report.outputs == {"class_probabilities": ["float32", [None, 6]]}
    assert max(report.max_abs_diff.values()) < 1e-4

"""Families of random optimization problems for the learned optimizer.

Each family draws `K` independent problems at once: every parameter tensor
has a leading problem axis of size `K`, and `loss` returns the `K` losses, so a
whole batch of problems is optimized by one coordinatewise update. A problem
is `(params, constants)` (initial parameters and fixed data such as `W`, `y`),
and `batches` draws the per-step minibatches of one episode.

- `Quadratic`: `f(theta) = ||W theta - y||^2` with Gaussian `W`, `y`, `theta_0`
  (the paper's 10-d quadratics).
- `DigitsMLP`: cross-entropy of an MLP (default one hidden layer of 20 sigmoid
  units) on minibatches of 128 of scikit-learn's 8x8 digits (the stand-in for
  MNIST); sizes and activation are arguments for the transfer experiments.
- `DigitsCNN`: a small CNN (two 3x3 conv + pooling stages, then a linear
  classifier) on the same digits as 8x8 images.

Losses are written with `keras.ops`; sampling is numpy (seeded).
"""

import numpy as np
from keras import ops

from kzoo.datasets import digits


class Quadratic:
    """Random quadratics `||W theta - y||^2`, all entries standard normal.

    Args:
        dim: dimension of `theta` (and of `y`; `W` is `dim x dim`).
    """

    name = "quadratic"

    def __init__(self, dim=10):
        self.dim = dim

    def sample(self, rng, num_problems):
        """`(params, constants)` of `num_problems` fresh problems."""
        k, d = num_problems, self.dim
        constants = {
            "w": rng.standard_normal((k, d, d)).astype("float32"),
            "y": rng.standard_normal((k, d)).astype("float32"),
        }
        return [rng.standard_normal((k, d)).astype("float32")], constants

    def batches(self, rng, num_problems, steps):
        """Per-step data of one episode (a quadratic has none)."""
        return {}

    def loss(self, params, constants, batch):
        """The `K` losses, `(K,)`."""
        residual = ops.einsum("kij,kj->ki", constants["w"], params[0]) - constants["y"]
        return ops.sum(ops.square(residual), axis=-1)


def _digits_train():
    x, y = digits.load("train")
    return x.reshape(len(x), -1), y


def _gaussian_weight(rng, shape):
    # IID Gaussian (as in the paper) with Glorot's variance.
    std = np.sqrt(2.0 / (shape[-2] + shape[-1]))
    return (std * rng.standard_normal(shape)).astype("float32")


def _cross_entropy(logits, labels):
    log_probs = logits - ops.logsumexp(logits, axis=-1, keepdims=True)
    picked = ops.take_along_axis(log_probs, ops.expand_dims(labels, -1), axis=-1)
    return -ops.mean(ops.squeeze(picked, -1), axis=-1)


class _Digits:
    batch_size = 128

    def __init__(self):
        self.x, self.y = _digits_train()

    def batches(self, rng, num_problems, steps):
        """Minibatches of the digits train split: `x (steps, K, 128, 64)`, `y`."""
        idx = rng.integers(0, len(self.x), (steps, num_problems, self.batch_size))
        return {"x": self.x[idx], "y": self.y[idx]}


class DigitsMLP(_Digits):
    """MLPs on scikit-learn's digits (64 inputs, 10 classes), minibatch 128.

    Args:
        hidden: sizes of the hidden layers.
        activation: `"sigmoid"` or `"relu"`.
    """

    def __init__(self, hidden=(20,), activation="sigmoid"):
        super().__init__()
        if activation not in ("sigmoid", "relu"):
            raise ValueError(f"DigitsMLP: activation must be sigmoid or relu, got {activation!r}.")
        self.hidden, self.activation = tuple(hidden), activation
        self.name = f"digits_mlp_{'x'.join(map(str, hidden))}_{activation}"

    def sample(self, rng, num_problems):
        sizes = [64, *self.hidden, 10]
        params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            params += [
                _gaussian_weight(rng, (num_problems, fan_in, fan_out)),
                np.zeros((num_problems, fan_out), "float32"),
            ]
        return params, {}

    def loss(self, params, constants, batch):
        h = ops.convert_to_tensor(batch["x"])
        act = ops.sigmoid if self.activation == "sigmoid" else ops.relu
        layers = len(params) // 2
        for i in range(layers):
            h = ops.einsum("kbi,kio->kbo", h, params[2 * i]) + params[2 * i + 1][:, None, :]
            if i < layers - 1:
                h = act(h)
        return _cross_entropy(h, batch["y"])


class DigitsCNN(_Digits):
    """Small CNNs on the digits as 8x8 images: two stages of 3x3 conv (same
    padding, sigmoid) and 2x2 average pooling, then a linear classifier.

    Args:
        channels: channels of the two conv layers.
    """

    name = "digits_cnn"

    def __init__(self, channels=8):
        super().__init__()
        self.channels = channels

    def sample(self, rng, num_problems):
        k, c = num_problems, self.channels
        shapes = [(k, 9 * 1, c), (k, c), (k, 9 * c, c), (k, c), (k, 4 * c, 10), (k, 10)]
        params = [
            _gaussian_weight(rng, s) if len(s) == 3 else np.zeros(s, "float32") for s in shapes
        ]
        return params, {}

    @staticmethod
    def _conv_pool(h, kernel, bias):
        # h: (K, B, H, W, C); a 3x3 "same" convolution with per-problem
        # kernels, written as one contraction over the nine shifted copies.
        size = h.shape[2]
        padded = ops.pad(h, [(0, 0), (0, 0), (1, 1), (1, 1), (0, 0)])
        patches = ops.concatenate(
            [padded[:, :, i : i + size, j : j + size, :] for i in range(3) for j in range(3)],
            axis=-1,
        )
        h = ops.sigmoid(
            ops.einsum("kbhwi,kio->kbhwo", patches, kernel) + bias[:, None, None, None, :]
        )
        k, b, _, _, c = h.shape
        h = ops.reshape(h, (k, b, size // 2, 2, size // 2, 2, c))
        return ops.mean(h, axis=(3, 5))

    def loss(self, params, constants, batch):
        x = ops.convert_to_tensor(batch["x"])
        h = ops.reshape(x, (*x.shape[:2], 8, 8, 1))
        h = self._conv_pool(h, params[0], params[1])
        h = self._conv_pool(h, params[2], params[3])
        h = ops.reshape(h, (*h.shape[:2], -1))
        logits = ops.einsum("kbi,kio->kbo", h, params[4]) + params[5][:, None, :]
        return _cross_entropy(logits, batch["y"])


FAMILIES = {
    "quadratic": Quadratic,
    "digits_mlp": DigitsMLP,
    "digits_cnn": DigitsCNN,
}

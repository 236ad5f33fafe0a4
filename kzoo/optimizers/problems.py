"""Families of random optimization problems for the learned optimizer.

Each family draws `K` independent problems at once: every parameter tensor
has a leading problem axis of size `K`, and `loss` returns the `K` losses, so a
whole batch of problems is optimized by one coordinatewise update. A problem
is `(params, constants)` (initial parameters and fixed data such as `W`, `y`),
and `batches` draws the per-step minibatches of one episode.

- `Quadratic`: `f(theta) = ||W theta - y||^2` with Gaussian `W`, `y`, `theta_0`
  (the paper's 10-d quadratics).
- `MLP`: an MLP (or a linear model) on one of the local `DATASETS`
  (scikit-learn's bundled and synthetic sets, the digits, the texture patches
  at 8x8): cross-entropy for classification, squared error for regression.
- `CNN`: a small CNN (two 3x3 conv + pooling stages, then a linear
  classifier) on the 8x8 image datasets.
- `DigitsMLP`, `DigitsCNN`: the paper's MNIST experiments at the digits' scale
  (minibatches of 128, sigmoid units), the families of the first presets.
- `Reparametrized`: a family whose parameters are stored rescaled, so the
  step size that suits it is unknown to the optimizer (task augmentation).
- `Mixture`: a distribution over families (one drawn per episode);
  `general_training_distribution()` is the one of `lstm_optimizer_general`,
  `noisy_training_distribution()` the one of `lstm_optimizer_general_noisy`,
  `rescaled_training_distribution()` the one of
  `lstm_optimizer_general_rescaled`, `lstm_optimizer_general_long_unroll`
  and `lstm_optimizer_general_direct`.

Losses are written with `keras.ops`; sampling is numpy (seeded).
"""

import functools

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


def _gaussian_weight(rng, shape, scale=1.0):
    # IID Gaussian (as in the paper) with Glorot's variance, times `scale`
    # (one factor per problem, broadcast over the problem axis).
    std = np.sqrt(2.0 / (shape[-2] + shape[-1]))
    noise = rng.standard_normal(shape)
    return (std * np.reshape(scale, (-1,) + (1,) * (len(shape) - 1)) * noise).astype("float32")


def _cross_entropy(logits, labels):
    log_probs = logits - ops.logsumexp(logits, axis=-1, keepdims=True)
    picked = ops.take_along_axis(log_probs, ops.expand_dims(labels, -1), axis=-1)
    return -ops.mean(ops.squeeze(picked, -1), axis=-1)


def _standardized(x):
    x = np.asarray(x, "float64")
    return ((x - x.mean(0)) / (x.std(0) + 1e-8)).astype("float32")


@functools.lru_cache(maxsize=None)
def load_dataset(name):
    """The training data of a problem family: `(x, y, num_classes)`.

    Args:
        name: one of `DATASETS`.

    Returns:
        `x` float32 `(n, d)` (the 8x8 images flattened), `y` int32 class
        indices, or float32 `(n, 1)` standardized targets with
        `num_classes` 0 for regression. Loaded once per process; the
        shared arrays are read-only.

    Example:

    >>> x, y, num_classes = load_dataset("wine")
    >>> x.shape, num_classes
    ((178, 13), 3)
    """
    x, y, num_classes = _read_dataset(name)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y, num_classes


def _read_dataset(name):
    import sklearn.datasets as sk

    if name in ("digits", "digits_noisy_labels", "texture_patches_8x8"):
        if name.startswith("digits"):
            x, y = digits.load("train")
            if name == "digits_noisy_labels":  # a fifth of the labels drawn at random
                rng = np.random.default_rng(0)
                noisy = rng.uniform(size=len(y)) < 0.2
                y = np.where(noisy, rng.integers(0, 10, len(y)), y)
        else:
            from kzoo.datasets import texture_patches

            x, y = texture_patches.load("train")  # (n, 32, 32, 1), standardized
            x = x.reshape(len(x), 8, 4, 8, 4).mean(axis=(2, 4))
        return x.reshape(len(x), -1).astype("float32"), y.astype("int32"), int(y.max()) + 1
    if name in ("wine", "breast_cancer", "iris"):
        x, y = getattr(sk, f"load_{name}")(return_X_y=True)
        return _standardized(x), y.astype("int32"), int(y.max()) + 1
    if name == "synthetic_classification":
        x, y = sk.make_classification(
            n_samples=2000, n_features=20, n_informative=10, n_classes=4, random_state=0
        )
        return _standardized(x), y.astype("int32"), 4
    if name in ("noisy_classification", "hastie", "moons", "gaussian_quantiles"):
        if name == "noisy_classification":  # a quarter of the labels random, overlapping classes
            x, y = sk.make_classification(
                n_samples=4000,
                n_features=20,
                n_informative=10,
                n_classes=6,
                flip_y=0.25,
                class_sep=0.7,
                random_state=1,
            )
        elif name == "hastie":  # binary: is the squared norm of 10 Gaussians above 9.34
            x, y = sk.make_hastie_10_2(n_samples=4000, random_state=0)
            y = (y > 0).astype("int32")
        elif name == "moons":
            x, y = sk.make_moons(n_samples=2000, noise=0.35, random_state=0)
        else:  # 4 concentric shells of a 6-d Gaussian
            x, y = sk.make_gaussian_quantiles(
                n_samples=3000, n_features=6, n_classes=4, random_state=0
            )
        return _standardized(x), y.astype("int32"), int(y.max()) + 1
    if name == "swiss_roll":  # the position along a noisy 3-d roll
        x, y = sk.make_swiss_roll(n_samples=3000, noise=1.5, random_state=0)
        return _standardized(x), _standardized(y[:, None]), 0
    if name in ("diabetes", "synthetic_regression", "friedman"):
        if name == "diabetes":
            x, y = sk.load_diabetes(return_X_y=True)
        elif name == "friedman":  # nonlinear, with noise: its loss has a floor
            x, y = sk.make_friedman1(n_samples=2000, n_features=10, noise=1.0, random_state=0)
        else:
            x, y = sk.make_regression(n_samples=2000, n_features=20, noise=10.0, random_state=0)
        return _standardized(x), _standardized(y[:, None]), 0
    raise ValueError(f"problems: unknown dataset {name!r}; use one of {DATASETS}.")


DATASETS = (
    "digits",
    "texture_patches_8x8",
    "wine",
    "breast_cancer",
    "iris",
    "synthetic_classification",
    "diabetes",
    "synthetic_regression",
    "friedman",
    "digits_noisy_labels",
    "noisy_classification",
    "hastie",
    "moons",
    "gaussian_quantiles",
    "swiss_roll",
)
# 8x8 single-channel images
IMAGE_DATASETS = ("digits", "digits_noisy_labels", "texture_patches_8x8")
ACTIVATIONS = {
    "sigmoid": ops.sigmoid,
    "tanh": ops.tanh,
    "relu": ops.relu,
    "elu": ops.elu,
}


class _Supervised:
    """Minibatches of a local dataset's train split, with per-problem
    initialization scales drawn log-uniformly from `init_scale`."""

    def __init__(self, dataset, activation, batch_size, init_scale):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"{type(self).__name__}: activation must be one of {tuple(ACTIVATIONS)}, "
                f"got {activation!r}."
            )
        self.dataset, self.activation, self.batch_size = dataset, activation, batch_size
        self.init_scale = tuple(float(s) for s in np.broadcast_to(init_scale, (2,)))
        self.x, self.y, self.num_classes = load_dataset(dataset)

    def _scales(self, rng, num_problems):
        low, high = self.init_scale
        if low == high:  # no draw: the stream of a fixed scale stays the paper's
            return np.full((num_problems,), low)
        return np.exp(rng.uniform(np.log(low), np.log(high), num_problems))

    def batches(self, rng, num_problems, steps):
        """Minibatches: `x (steps, K, batch, d)`, `y (steps, K, batch[, 1])`."""
        idx = rng.integers(0, len(self.x), (steps, num_problems, self.batch_size))
        return {"x": self.x[idx], "y": self.y[idx]}

    def _loss(self, outputs, targets):
        if self.num_classes:
            return _cross_entropy(outputs, targets)
        return ops.mean(ops.square(outputs[..., 0] - targets[..., 0]), axis=-1)

    @property
    def _outputs(self):
        return self.num_classes or 1


class MLP(_Supervised):
    """MLPs (or, with no hidden layer, softmax/linear regression) on a local
    dataset: cross-entropy for classification, mean squared error for
    regression (standardized targets).

    Args:
        dataset: one of `DATASETS`.
        hidden: sizes of the hidden layers (`()`: a linear model).
        activation: one of `ACTIVATIONS`.
        batch_size: minibatch size.
        init_scale: factor on the Glorot-variance Gaussian initialization, or
            a `(low, high)` range drawn log-uniformly per problem.
    """

    def __init__(
        self, dataset="digits", hidden=(20,), activation="sigmoid", batch_size=128, init_scale=1.0
    ):
        super().__init__(dataset, activation, batch_size, init_scale)
        self.hidden = tuple(hidden)
        arch = f"mlp_{'x'.join(map(str, hidden))}_{activation}" if hidden else "linear"
        self.name = f"{dataset}_{arch}_b{batch_size}"

    def sample(self, rng, num_problems):
        """`(params, constants)`: weights `(K, in, out)` and zero biases."""
        scale = self._scales(rng, num_problems)
        sizes = [self.x.shape[1], *self.hidden, self._outputs]
        params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            params += [
                _gaussian_weight(rng, (num_problems, fan_in, fan_out), scale),
                np.zeros((num_problems, fan_out), "float32"),
            ]
        return params, {}

    def loss(self, params, constants, batch):
        """The `K` losses, `(K,)`."""
        h = ops.convert_to_tensor(batch["x"])
        layers = len(params) // 2
        for i in range(layers):
            h = ops.einsum("kbi,kio->kbo", h, params[2 * i]) + params[2 * i + 1][:, None, :]
            if i < layers - 1:
                h = ACTIVATIONS[self.activation](h)
        return self._loss(h, batch["y"])


class DigitsMLP(MLP):
    """MLPs on scikit-learn's digits (64 inputs, 10 classes), minibatch 128
    (the paper's MNIST experiment at the digits' scale).

    Args:
        hidden: sizes of the hidden layers.
        activation: `"sigmoid"` or `"relu"`.
    """

    def __init__(self, hidden=(20,), activation="sigmoid"):
        if activation not in ("sigmoid", "relu"):
            raise ValueError(f"DigitsMLP: activation must be sigmoid or relu, got {activation!r}.")
        super().__init__("digits", hidden, activation)
        self.name = f"digits_mlp_{'x'.join(map(str, hidden))}_{activation}"


class CNN(_Supervised):
    """Small CNNs on 8x8 single-channel images: two stages of 3x3 conv (same
    padding) and 2x2 average pooling, then a linear classifier.

    Args:
        dataset: one of `IMAGE_DATASETS`.
        channels: channels of the two conv layers.
        activation: one of `ACTIVATIONS`.
        batch_size: minibatch size.
        init_scale: as for `MLP`.
    """

    def __init__(
        self, dataset="digits", channels=8, activation="sigmoid", batch_size=128, init_scale=1.0
    ):
        if dataset not in IMAGE_DATASETS:
            raise ValueError(f"CNN: dataset must be one of {IMAGE_DATASETS}, got {dataset!r}.")
        super().__init__(dataset, activation, batch_size, init_scale)
        self.channels = channels
        self.name = f"{dataset}_cnn_{channels}_{activation}_b{batch_size}"

    def sample(self, rng, num_problems):
        """`(params, constants)`: two conv kernels `(K, 9 * in, out)`, the
        classifier, and zero biases."""
        scale = self._scales(rng, num_problems)
        k, c = num_problems, self.channels
        shapes = [(k, 9 * 1, c), (k, c), (k, 9 * c, c), (k, c), (k, 4 * c, self._outputs)]
        shapes.append((k, self._outputs))
        params = [
            _gaussian_weight(rng, s, scale) if len(s) == 3 else np.zeros(s, "float32")
            for s in shapes
        ]
        return params, {}

    def _conv_pool(self, h, kernel, bias):
        # h: (K, B, H, W, C); a 3x3 "same" convolution with per-problem
        # kernels, written as one contraction over the nine shifted copies.
        size = h.shape[2]
        padded = ops.pad(h, [(0, 0), (0, 0), (1, 1), (1, 1), (0, 0)])
        patches = ops.concatenate(
            [padded[:, :, i : i + size, j : j + size, :] for i in range(3) for j in range(3)],
            axis=-1,
        )
        h = ACTIVATIONS[self.activation](
            ops.einsum("kbhwi,kio->kbhwo", patches, kernel) + bias[:, None, None, None, :]
        )
        k, b, _, _, c = h.shape
        h = ops.reshape(h, (k, b, size // 2, 2, size // 2, 2, c))
        return ops.mean(h, axis=(3, 5))

    def loss(self, params, constants, batch):
        """The `K` losses, `(K,)`."""
        x = ops.convert_to_tensor(batch["x"])
        h = ops.reshape(x, (*x.shape[:2], 8, 8, 1))
        h = self._conv_pool(h, params[0], params[1])
        h = self._conv_pool(h, params[2], params[3])
        h = ops.reshape(h, (*h.shape[:2], -1))
        logits = ops.einsum("kbi,kio->kbo", h, params[4]) + params[5][:, None, :]
        return self._loss(logits, batch["y"])


class DigitsCNN(CNN):
    """The paper's small CNN at the digits' scale: `CNN` on the digits with
    sigmoid units and minibatches of 128.

    Args:
        channels: channels of the two conv layers.
    """

    def __init__(self, channels=8):
        super().__init__("digits", channels, "sigmoid", 128)
        self.name = "digits_cnn"


class Reparametrized:
    """A family whose parameters are stored divided by a random scale.

    Each parameter tensor of each problem draws a scale `c` log-uniformly
    from `scale_range`; the optimizer sees `theta' = theta / c` and the loss
    is the wrapped family's at `c * theta'`. The problem is the same, but its
    gradients are `c` times larger and the step that suits it `1 / c` times
    smaller in `theta'`, so an optimizer meta-trained on reparametrized
    families cannot rely on one step size and must find it from the
    gradients it sees (task augmentation; `docs/learned_optimizer_general.md`).

    Args:
        problem: the family to wrap.
        scale_range: `(low, high)` of the log-uniform scales.

    Example:

    >>> problem = Reparametrized(MLP("wine", (), "sigmoid", 32), (0.1, 10.0))
    >>> problem.name
    'wine_linear_b32_rescaled'
    >>> rng = np.random.default_rng(0)
    >>> params, constants = problem.sample(rng, 4)
    >>> scales = constants["rescaled_scale_0"]
    >>> bool(scales.shape == (4, 1, 1) and scales.min() >= 0.1 and scales.max() <= 10.0)
    True
    """

    def __init__(self, problem, scale_range=(0.1, 10.0)):
        low, high = (float(s) for s in scale_range)
        if not 0 < low <= high:
            raise ValueError(
                f"Reparametrized: scale_range must be 0 < low <= high, got {scale_range}."
            )
        self.problem, self.scale_range = problem, (low, high)
        self.name = f"{problem.name}_rescaled"

    def sample(self, rng, num_problems):
        """`(params, constants)`: the wrapped family's, each tensor divided by
        its scales (kept in `constants["rescaled_scale_<i>"]`)."""
        params, constants = self.problem.sample(rng, num_problems)
        low, high = np.log(self.scale_range)
        scaled = []
        for i, p in enumerate(params):
            c = np.exp(rng.uniform(low, high, num_problems)).astype("float32")
            c = c.reshape((num_problems,) + (1,) * (p.ndim - 1))
            constants = {**constants, f"rescaled_scale_{i}": c}
            scaled.append((p / c).astype("float32"))
        return scaled, constants

    def batches(self, rng, num_problems, steps):
        """The wrapped family's minibatches."""
        return self.problem.batches(rng, num_problems, steps)

    def loss(self, params, constants, batch):
        """The `K` losses of the wrapped family at `c * theta'`, `(K,)`."""
        params = [p * constants[f"rescaled_scale_{i}"] for i, p in enumerate(params)]
        return self.problem.loss(params, constants, batch)


class Mixture:
    """A distribution over problem families: each episode of meta-training
    draws one member (uniformly), then its problems.

    Args:
        members: problem family instances (distinct `name`s).
        name: the mixture's name.
    """

    def __init__(self, members, name="mixture"):
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"Mixture: member names must be distinct, got {names}.")
        self.members, self.name = list(members), name

    def draw(self, rng):
        """One member family."""
        return self.members[rng.integers(len(self.members))]


def general_training_distribution():
    """The meta-training distribution of `lstm_optimizer_general`.

    Fourteen families on five local datasets (documented in
    `docs/learned_optimizer_general.md`, with the held-out split that is never
    used here): the 10-d quadratics; on the digits, sigmoid, tanh and ReLU
    MLPs of one or two hidden layers, softmax regression and sigmoid and ReLU
    CNNs; on the wine data, softmax regression and a tanh MLP; on scikit-learn's
    synthetic classification data, a ReLU and a two-layer tanh MLP; on its
    synthetic regression data, linear regression and a ReLU MLP. Batch sizes
    are 32, 64 or 128 and every initialization scale is drawn per problem
    from `[0.5, 2]` times Glorot's.
    """
    scale = (0.5, 2.0)
    return Mixture(
        [
            Quadratic(),
            MLP("digits", (20,), "sigmoid", 128, scale),
            MLP("digits", (32,), "tanh", 64, scale),
            MLP("digits", (32,), "relu", 128, scale),
            MLP("digits", (16, 16), "relu", 32, scale),
            MLP("digits", (), "sigmoid", 128, scale),
            CNN("digits", 8, "sigmoid", 64, scale),
            CNN("digits", 8, "relu", 32, scale),
            MLP("wine", (), "sigmoid", 32, scale),
            MLP("wine", (16,), "tanh", 32, scale),
            MLP("synthetic_classification", (32,), "relu", 64, scale),
            MLP("synthetic_classification", (32, 32), "tanh", 128, scale),
            MLP("synthetic_regression", (), "sigmoid", 32, scale),
            MLP("synthetic_regression", (32,), "relu", 64, scale),
        ],
        name="general",
    )


def noisy_training_distribution():
    """The meta-training distribution of `lstm_optimizer_general_noisy`.

    The fourteen families of `general_training_distribution`, and eight whose
    loss keeps a floor well above zero over 1000 steps (label noise,
    overlapping classes, noisy targets, or a boundary the model fits slowly),
    on six more local datasets (documented in
    `docs/learned_optimizer_general.md`): on the digits with a fifth of the
    labels random, a ReLU MLP and a ReLU CNN; on scikit-learn's generated
    data, a ReLU MLP and softmax regression on overlapping classes with a
    quarter of the labels random, a ReLU MLP on Hastie's 10-d problem, a
    two-layer tanh MLP on noisy moons, a tanh MLP on Gaussian quantiles, and
    a ReLU MLP regressing the position along a noisy swiss roll.
    """
    scale = (0.5, 2.0)
    return Mixture(
        general_training_distribution().members
        + [
            MLP("digits_noisy_labels", (32,), "relu", 64, scale),
            CNN("digits_noisy_labels", 8, "relu", 64, scale),
            MLP("noisy_classification", (48,), "relu", 128, scale),
            MLP("noisy_classification", (), "sigmoid", 64, scale),
            MLP("hastie", (32,), "relu", 64, scale),
            MLP("moons", (32, 32), "tanh", 32, scale),
            MLP("gaussian_quantiles", (32,), "tanh", 64, scale),
            MLP("swiss_roll", (32,), "relu", 32, scale),
        ],
        name="general_noisy",
    )


def rescaled_training_distribution(scale_range=(0.1, 10.0)):
    """The meta-training distribution of `lstm_optimizer_general_rescaled`,
    `lstm_optimizer_general_long_unroll` and `lstm_optimizer_general_direct`.

    The 22 families of `noisy_training_distribution`, each `Reparametrized`:
    every parameter tensor is stored divided by a scale drawn log-uniformly
    from `scale_range`, so the step size that suits a problem varies by a
    factor of up to `high / low` and has to be found from its gradients.
    """
    return Mixture(
        [Reparametrized(m, scale_range) for m in noisy_training_distribution().members],
        name="general_rescaled",
    )


FAMILIES = {
    "quadratic": Quadratic,
    "digits_mlp": DigitsMLP,
    "digits_cnn": DigitsCNN,
    "general": general_training_distribution,
    "general_noisy": noisy_training_distribution,
    "general_rescaled": rescaled_training_distribution,
}

"""EM attention (EMANet, Li et al. 2019) and HighwayEM (Song, Kim & Shim, 2020).

The whole implementation of both papers' layers lives here (equations:
`docs/equations.md` §S4):

- pure `keras.ops` functions: `e_step`, `m_step`, `em_iterations` (the
  unrolled EM with the highway M-step), `mixture_log_likelihood`;
- `EMAttention`: EMANet's module, gradients stopped through the iterations
  by default;
- `HighwayEM`: the same module with the generalized-EM (Newton) M-step
  `mu_t = (1 - gamma) mu_{t-1} + gamma mu_EM`, gradients through every
  iteration; `gamma` fixed or learnable.

With L2-normalized bases, EMANet's E-step `softmax_K(X mu^T / tau)` and
normalized M-step are exactly EM for a mixture of von Mises-Fisher
distributions with equal weights and concentration `1 / tau`. kzoo keeps the
bases on the unit sphere in the highway step too, normalizing
`(1 - gamma) mu_{t-1} + gamma mu_EM`: the result lies on the arc between the
old bases and the EM optimum, so the expected log-likelihood does not decrease
(a generalized EM step; tested), and `gamma = 1` is EMANet's step exactly. The
`(1 - gamma)` term is the highway that carries gradient across iterations.
"""

import math

import keras
from keras import ops

from kzoo import backend
from kzoo.layers import contracts
from kzoo.layers.normalization import FiniteBatchNormalization


def _normalize(mu, epsilon=1e-6):
    return mu / ops.maximum(ops.norm(mu, axis=-1, keepdims=True), epsilon)


def e_step(x, mu, temperature=1.0):
    """Responsibilities `Z = softmax_K(X mu^T / temperature)`, `(batch, N, K)`."""
    return ops.softmax(ops.matmul(x, ops.swapaxes(mu, -1, -2)) / temperature, axis=-1)


def m_step(x, z, normalize=True, epsilon=1e-6):
    """`mu_EM = Z^T X / column sums of Z`, `(batch, K, C)`; L2-normalized if asked."""
    weights = z / (epsilon + ops.sum(z, axis=1, keepdims=True))
    mu = ops.matmul(ops.swapaxes(weights, -1, -2), x)
    return _normalize(mu) if normalize else mu


def em_iterations(
    x, mu, iterations, gamma=1.0, temperature=1.0, normalize=True, stop_gradient=False
):
    """Unrolled (generalized) EM from initial bases `mu`.

    Args:
        x: `(batch, N, C)` features.
        mu: `(batch, K, C)` or `(K, C)` initial bases.
        iterations: number T of E/M iterations.
        gamma: M-step size in (0, 1] (a float or a scalar tensor); 1 is EM.
        temperature: softmax temperature of the E-step.
        normalize: keep the bases on the unit sphere (EMANet).
        stop_gradient: stop gradients through the iterations (EMANet).

    Returns:
        `(z, mu)`: the last E-step's responsibilities `(batch, N, K)` and the
        final bases `(batch, K, C)`; `z @ mu` reconstructs `x`.
    """
    x = ops.convert_to_tensor(x)
    mu = ops.convert_to_tensor(mu, x.dtype)
    if len(mu.shape) == 2:
        mu = ops.broadcast_to(mu[None], (ops.shape(x)[0], *mu.shape))
    z = None
    for _ in range(iterations):
        z = e_step(x, mu, temperature)
        mu_new = (1.0 - gamma) * mu + gamma * m_step(x, z, normalize=False)
        mu_new = _normalize(mu_new) if normalize else mu_new
        mu = ops.stop_gradient(mu_new) if stop_gradient else mu_new
        z = ops.stop_gradient(z) if stop_gradient else z
    return z, mu


def mixture_log_likelihood(x, mu, temperature=1.0):
    """Mean over pixels of `log sum_k exp(x . mu_k / temperature)`.

    Up to a constant, the log-likelihood of the equal-weight von Mises-Fisher
    mixture that EMANet's EM fits (unit-norm bases), per image `(batch,)`.
    """
    logits = ops.matmul(x, ops.swapaxes(mu, -1, -2)) / temperature
    return ops.mean(ops.logsumexp(logits, axis=-1), axis=-1)


def running_bases(bases, batch_bases, momentum):
    """The running-mean update of the initial bases, from finite examples only.

    `normalize(momentum * bases + (1 - momentum) * mean_b batch_bases[b])`,
    where the mean runs over the examples whose final bases are finite
    (under `tf.distribute`, over those of the global batch). A batch without
    any finite example leaves `bases` unchanged: one NaN row cannot poison
    the state every later inference starts from.

    Args:
        bases: `(K, C)` running bases.
        batch_bases: `(batch, K, C)` final bases of the batch's examples.
        momentum: weight of the running bases.
    """
    bases = ops.convert_to_tensor(bases)
    batch_bases = ops.cast(batch_bases, "float32")
    finite = ops.cast(contracts.finite_examples(batch_bases), "float32")[:, None, None]
    total = ops.sum(ops.where(finite > 0, batch_bases, 0.0), axis=0)
    count = ops.sum(finite)
    # Means of sums and counts over replicas: the global batch's finite mean.
    total = backend.cross_replica_mean(total)
    count = backend.cross_replica_mean(count)
    batch_mean = total / ops.maximum(count, 1e-12)
    updated = _normalize(momentum * bases + (1.0 - momentum) * batch_mean)
    return ops.where(count > 0, updated, bases)


class _EMModule(keras.layers.Layer):
    """EMANet's module around unrolled EM; shared by both public layers."""

    def __init__(
        self,
        num_bases=64,
        iterations=3,
        gamma=1.0,
        learnable_gamma=False,
        stop_gradient=True,
        temperature=1.0,
        momentum=0.9,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(num_bases, int) or num_bases < 1:
            raise ValueError(f"`num_bases` must be a positive int, got {num_bases!r}.")
        if not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"`iterations` must be a positive int, got {iterations!r}.")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"`gamma` must be in (0, 1], got {gamma!r}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1), got {momentum!r}.")
        if learnable_gamma and gamma == 1.0:
            raise ValueError("A learnable `gamma` must start below 1 (it is a sigmoid).")
        self.num_bases = num_bases
        self.iterations = iterations
        self.gamma = float(gamma)
        self.learnable_gamma = learnable_gamma
        self.stop_gradient = stop_gradient
        self.temperature = float(temperature)
        self.momentum = float(momentum)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"{self.name}: {type(self).__name__} expects features of shape "
                f"(batch, height, width, channels) with known channels, got {input_shape}."
            )
        channels = input_shape[-1]
        self.bases = self.add_weight(
            name="bases",
            shape=(self.num_bases, channels),
            trainable=False,
            initializer=_UnitBases(math.sqrt(2.0 / self.num_bases)),
            autocast=False,
        )
        if self.learnable_gamma:
            logit = math.log(self.gamma / (1.0 - self.gamma))
            self.gamma_logit = self.add_weight(
                name="gamma_logit", shape=(), initializer=keras.initializers.Constant(logit)
            )
        policy = self.dtype_policy
        self.conv_in = keras.layers.Conv2D(channels, 1, name="conv_in", dtype=policy)
        self.conv_out = keras.layers.Conv2D(
            channels, 1, use_bias=False, name="conv_out", dtype=policy
        )
        self.norm = FiniteBatchNormalization(name="norm", dtype=policy)
        self.conv_in.build(input_shape)
        self.conv_out.build(input_shape)
        self.norm.build(input_shape)
        self.input_spec = keras.InputSpec(ndim=4, axes={-1: channels})

    def current_gamma(self):
        if self.learnable_gamma:
            return ops.sigmoid(self.gamma_logit)
        return self.gamma

    def call(self, inputs, training=False):
        contracts.check_nonempty(self, inputs, (1, 2), "at least one pixel")
        inputs = contracts.float_inputs(self, inputs)
        shape = ops.shape(inputs)
        pixels = -1 if None in inputs.shape[1:3] else inputs.shape[1] * inputs.shape[2]
        x = ops.reshape(self.conv_in(inputs), (shape[0], pixels, shape[-1]))
        # A copy: the running-mean update below assigns the variable in place,
        # which PyTorch's autograd would otherwise see through this tensor.
        mu0 = ops.copy(ops.cast(self.bases, x.dtype))
        z, mu = em_iterations(
            x,
            mu0,
            self.iterations,
            gamma=self.current_gamma(),
            temperature=self.temperature,
            stop_gradient=self.stop_gradient,
        )
        if training:
            self.bases.assign(running_bases(self.bases, ops.stop_gradient(mu), self.momentum))
        reconstruction = ops.reshape(ops.matmul(z, mu), shape)
        y = self.norm(self.conv_out(ops.relu(reconstruction)), training=training)
        return ops.relu(y + inputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "num_bases": self.num_bases,
            "iterations": self.iterations,
            "temperature": self.temperature,
            "momentum": self.momentum,
        }


class _UnitBases(keras.initializers.Initializer):
    """N(0, stddev) rows, each L2-normalized (EMANet's initial bases)."""

    def __init__(self, stddev):
        self.stddev = stddev

    def __call__(self, shape, dtype=None):
        return _normalize(keras.random.normal(shape, stddev=self.stddev, dtype=dtype))

    def get_config(self):
        return {"stddev": self.stddev}


@keras.saving.register_keras_serializable(package="kzoo")
class EMAttention(_EMModule):
    """EMANet's expectation-maximization attention module.

    Features X `(batch, H, W, C)` pass a 1x1 conv, then T iterations of EM
    with K L2-normalized bases (initialized from a running mean of past
    batches' final bases, updated outside the gradient during training); the
    reconstruction `Z mu` goes through ReLU, a 1x1 conv and batch
    normalization and is added to the input (residual, then ReLU).

    Args:
        num_bases: number of bases K (EMANet: 64).
        iterations: EM iterations T (EMANet: 3).
        stop_gradient: stop gradients through the iterations (EMANet does;
            as in its code, the input 1x1 conv then receives no gradient and
            keeps its initialization); `False` backpropagates through the
            unrolled EM.
        temperature: E-step softmax temperature.
        momentum: running-mean momentum of the initial bases (EMANet: 0.9).

    Contract: features `(batch, H, W, C)`, C fixed at build. A non-finite
    example gives non-finite outputs (it propagates) and never enters the
    running bases (`running_bases`) or the batch-norm statistics
    (`FiniteBatchNormalization`).

    Example:

    >>> x = keras.random.normal((2, 8, 8, 16))
    >>> tuple(EMAttention(num_bases=4, iterations=3)(x).shape)
    (2, 8, 8, 16)
    """

    def __init__(
        self,
        num_bases=64,
        iterations=3,
        stop_gradient=True,
        temperature=1.0,
        momentum=0.9,
        **kwargs,
    ):
        super().__init__(
            num_bases=num_bases,
            iterations=iterations,
            gamma=1.0,
            stop_gradient=stop_gradient,
            temperature=temperature,
            momentum=momentum,
            **kwargs,
        )

    def get_config(self):
        return {**super().get_config(), "stop_gradient": self.stop_gradient}


@keras.saving.register_keras_serializable(package="kzoo")
class HighwayEM(_EMModule):
    """EM attention with the highway (generalized-EM Newton) M-step of HEMNet.

    As `EMAttention`, but each M-step is
    `mu_t = normalize((1 - gamma) mu_{t-1} + gamma mu_EM)` and gradients flow
    through every iteration; the `(1 - gamma)` skip keeps them from vanishing
    as T grows. `gamma = 1` is unrolled EM (`EMAttention(stop_gradient=False)`).

    Args:
        num_bases: number of bases K.
        iterations: EM iterations T.
        gamma: M-step size in (0, 1].
        learnable_gamma: learn gamma (as a sigmoid, starting at `gamma` < 1).
        temperature: E-step softmax temperature.
        momentum: running-mean momentum of the initial bases.

    Contract: as `EMAttention`'s.

    Example:

    >>> x = keras.random.normal((2, 8, 8, 16))
    >>> tuple(HighwayEM(num_bases=4, iterations=6, gamma=0.5)(x).shape)
    (2, 8, 8, 16)
    """

    def __init__(
        self,
        num_bases=64,
        iterations=3,
        gamma=0.5,
        learnable_gamma=False,
        temperature=1.0,
        momentum=0.9,
        **kwargs,
    ):
        super().__init__(
            num_bases=num_bases,
            iterations=iterations,
            gamma=gamma,
            learnable_gamma=learnable_gamma,
            stop_gradient=False,
            temperature=temperature,
            momentum=momentum,
            **kwargs,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "gamma": self.gamma,
            "learnable_gamma": self.learnable_gamma,
        }

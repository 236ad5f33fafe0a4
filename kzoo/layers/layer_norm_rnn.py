"""Layer-normalized recurrent cells (Ba, Kiros & Hinton, 2016).

The whole implementation of the paper's recurrent models lives here:

- pure `keras.ops` functions (`layer_norm`, `layer_norm_lstm_step`,
  `layer_norm_gru_step`, `layer_norm_simple_rnn_step`) that compute one time
  step from explicit parameters, so they can be tested alone and reused;
- thin cells (`LayerNormLSTMCell`, `LayerNormGRUCell`,
  `LayerNormSimpleRNNCell`) for `keras.layers.RNN`; each step is split into
  its state-free part (`project`: the input projection and its
  normalization) and its recurrence (`recur`);
- convenience sequence layers (`LayerNormLSTM`, `LayerNormGRU`,
  `LayerNormSimpleRNN`) with the usual `return_sequences`, `return_state`,
  masking, `go_backwards` and `stateful` behaviour of `keras.layers.RNN`.
  They center their kernels once per sequence (`center_kernel`), so each
  normalization inside the loop needs only a second moment
  (`zero_mean_layer_norm`), and may project the whole sequence before the
  loop (`precompute_inputs`).

The equations are those of `docs/equations.md` §S1. The cells never
subclass `keras.layers.LSTM`/`GRU`: those layers may dispatch to a fused cuDNN
kernel that reads the weights directly and would skip the normalization.
"""

import inspect

import keras
import numpy as np
from keras import activations
from keras import constraints
from keras import initializers
from keras import ops
from keras import regularizers

# Keras' RNN layer resets per-sequence dropout masks only for cells that carry
# this mixin; it has no public export.
from kzoo import backend
from kzoo import compat
from kzoo.compat import DropoutRNNCell
from kzoo.layers import contracts


def layer_norm(x, gamma, beta, epsilon=1e-3):
    """Layer normalization over the last axis of `x`.

    `LN(a) = gamma * (a - mean(a)) / sqrt(var(a) + epsilon) + beta`, with the
    statistics of each example taken over its own features only (no batch
    statistics, identical at training and inference). Half-precision inputs
    are normalized in float32 and cast back.

    Args:
        x: tensor of shape `(..., features)`.
        gamma: gain, shape `(features,)`.
        beta: bias, shape `(features,)`.
        epsilon: small float added to the variance.

    Returns:
        A tensor with the shape and dtype of `x`.
    """
    # `keras.ops.layer_normalization` computes the same expression (in at
    # least float32), with each backend's fastest kernel: a fused one on
    # PyTorch, one-pass moments elsewhere.
    return ops.layer_normalization(x, gamma, beta, axis=-1, epsilon=epsilon)


def center_kernel(kernel, group_sizes=None):
    """`kernel` with each row's mean over each group of output columns removed.

    For any `x`, `x @ center_kernel(W)` is `x @ W` minus the mean of its
    features (of each group's features), because that mean is linear in `x`.
    The layer norm of a product is then `zero_mean_layer_norm` of the
    product with the centered kernel, which needs no mean of its own
    (docs/equations.md §S1, "Computing it").

    Args:
        kernel: `(input_dim, columns)`.
        group_sizes: sizes of the consecutive column groups that are
            normalized separately (default: all columns, one group).

    Returns:
        A tensor with the shape and dtype of `kernel`.

    Example:

    >>> w = center_kernel(np.array([[1.0, 3.0], [0.0, 4.0]]))
    >>> keras.ops.convert_to_numpy(w).tolist()
    [[-1.0, 1.0], [-2.0, 2.0]]
    """
    if group_sizes is None:
        return ops.subtract(kernel, ops.mean(kernel, axis=-1, keepdims=True))
    splits = [int(i) for i in np.cumsum(group_sizes)[:-1]]
    parts = ops.split(kernel, splits, axis=-1)
    return ops.concatenate(
        [ops.subtract(part, ops.mean(part, axis=-1, keepdims=True)) for part in parts], axis=-1
    )


def zero_mean_layer_norm(x, gamma, beta, epsilon=1e-3):
    """`layer_norm` of features that already have zero mean.

    `gamma * x / sqrt(mean(x ** 2) + epsilon) + beta`, which is
    `layer_norm(x, gamma, beta, epsilon)` when every example's features have
    zero mean, as they do in a product with a `center_kernel` kernel: one
    reduction forward instead of two, and a hand-written gradient with two
    where autodiff's takes more passes. Where the backend has a fused layer
    norm (PyTorch; `kzoo.backend.fused_normalization`), that kernel is faster
    and computes the same numbers, so it is `layer_norm`. Half-precision
    inputs are normalized in float32 and cast back.

    Args:
        x: tensor of shape `(..., features)` with zero-mean features.
        gamma: gain, shape `(features,)`.
        beta: bias, shape `(features,)`.
        epsilon: small float added to the second moment.

    Returns:
        A tensor with the shape and dtype of `x`.

    Example:

    >>> x = np.array([[-1.0, 1.0], [2.0, -2.0]], "float32")
    >>> out = zero_mean_layer_norm(x, np.ones(2, "float32"), np.zeros(2, "float32"), 1e-6)
    >>> np.round(keras.ops.convert_to_numpy(out), 4).tolist()
    [[-1.0, 1.0], [1.0, -1.0]]
    """
    return _layer_norm_by_hand(x, gamma, beta, epsilon, zero_mean=True)


def _layer_norm_by_hand(x, gamma, beta, epsilon, zero_mean):
    """`layer_norm` (or `zero_mean_layer_norm`) with its gradient written out."""
    if backend.fused_normalization():
        return layer_norm(x, gamma, beta, epsilon)
    dtype = keras.backend.standardize_dtype(x.dtype)
    compute = "float64" if dtype == "float64" else "float32"
    x = ops.cast(x, compute)
    gamma, beta = ops.cast(gamma, compute), ops.cast(beta, compute)
    return ops.cast(_normalization(epsilon, zero_mean)(x, gamma, beta), dtype)


def _normalization(epsilon, zero_mean):
    def forward(x, gamma, beta):
        if not zero_mean:
            x = x - ops.mean(x, axis=-1, keepdims=True)
        inverse = ops.rsqrt(ops.mean(ops.square(x), axis=-1, keepdims=True) + epsilon)
        normalized = x * inverse

        def grad(upstream):
            d_normalized = upstream * gamma
            if not zero_mean:
                d_normalized = d_normalized - ops.mean(d_normalized, axis=-1, keepdims=True)
            d_x = inverse * (
                d_normalized
                - normalized * ops.mean(d_normalized * normalized, axis=-1, keepdims=True)
            )
            axes = tuple(range(len(upstream.shape) - 1))
            return d_x, ops.sum(upstream * normalized, axis=axes), ops.sum(upstream, axis=axes)

        return normalized * gamma + beta, grad

    return backend.custom_gradient(forward)


def _normalize(x, norm, epsilon, centered):
    return (zero_mean_layer_norm if centered else layer_norm)(x, *norm, epsilon)


def layer_norm_lstm_input(inputs, params, epsilon=1e-3, centered=False):
    """The state-free part of the LN-LSTM step: `LN_x(x W) + b`.

    It does not depend on the state, so a sequence layer computes it for
    every time step at once (`inputs` may have any leading axes).

    Args:
        inputs: `(..., input_dim)`.
        params: dict with `kernel`, `bias` (or `None`) and the
            `(gamma, beta)` pair `kernel_norm`.
        epsilon: layer-norm epsilon.
        centered: whether `kernel` is already `center_kernel(kernel)`; the
            normalization then takes no mean (`zero_mean_layer_norm`).

    Returns:
        The `(..., 4 * units)` input contribution to the gates.
    """
    z = _normalize(ops.matmul(inputs, params["kernel"]), params["kernel_norm"], epsilon, centered)
    if params.get("bias") is not None:
        z = z + params["bias"]
    return z


def layer_norm_lstm_recurrence(
    projected,
    h_prev,
    c_prev,
    params,
    epsilon=1e-3,
    activation=ops.tanh,
    recurrent_activation=ops.sigmoid,
    centered=False,
):
    """The state-dependent part of the LN-LSTM step.

    Args:
        projected: `(batch, 4 * units)`, `layer_norm_lstm_input` of the step.
        h_prev: `(batch, units)`, the state fed to the recurrent projection.
        c_prev: `(batch, units)`.
        params: dict with `recurrent_kernel` and the `(gamma, beta)` pairs
            `recurrent_norm`, `state_norm`.
        epsilon: layer-norm epsilon.
        activation: activation of the candidate and of the output.
        recurrent_activation: activation of the gates.
        centered: whether `recurrent_kernel` is already
            `center_kernel(recurrent_kernel)`.

    Returns:
        `(h_t, c_t)`.
    """
    z = projected + _normalize(
        ops.matmul(h_prev, params["recurrent_kernel"]), params["recurrent_norm"], epsilon, centered
    )
    z_i, z_f, z_c, z_o = ops.split(z, 4, axis=-1)
    c = recurrent_activation(z_f) * c_prev + recurrent_activation(z_i) * activation(z_c)
    if centered:  # the fast path: the state norm's gradient written out too
        state = _layer_norm_by_hand(c, *params["state_norm"], epsilon, zero_mean=False)
    else:
        state = layer_norm(c, *params["state_norm"], epsilon)
    h = recurrent_activation(z_o) * activation(state)
    return h, c


def layer_norm_lstm_step(
    inputs,
    h_prev,
    c_prev,
    params,
    epsilon=1e-3,
    activation=ops.tanh,
    recurrent_activation=ops.sigmoid,
):
    """One step of the layer-normalized LSTM.

    Gates are in Keras order `[i, f, c, o]`; the input and recurrent
    contributions to the `4 * units` gate vector are normalized separately and
    the cell state is normalized before the output activation:

        z   = LN_x(x W) + LN_h(h W_h) + b
        c_t = sigma(f) * c_prev + sigma(i) * tanh(g)
        h_t = sigma(o) * tanh(LN_c(c_t))

    It is `layer_norm_lstm_input` followed by `layer_norm_lstm_recurrence`.

    Args:
        inputs: `(batch, input_dim)`.
        h_prev: `(batch, units)`.
        c_prev: `(batch, units)`.
        params: dict with `kernel`, `recurrent_kernel`, `bias` (or `None`) and
            the `(gamma, beta)` pairs `kernel_norm`, `recurrent_norm`,
            `state_norm`.
        epsilon: layer-norm epsilon.
        activation: activation of the candidate and of the output.
        recurrent_activation: activation of the gates.

    Returns:
        `(h_t, c_t)`.
    """
    projected = layer_norm_lstm_input(inputs, params, epsilon)
    return layer_norm_lstm_recurrence(
        projected, h_prev, c_prev, params, epsilon, activation, recurrent_activation
    )


def layer_norm_gru_input(inputs, params, epsilon=1e-3, centered=False):
    """The state-free part of the LN-GRU step: `[LN_x1(x W_zr) + b, LN_x2(x W_h)]`.

    Args:
        inputs: `(..., input_dim)`, any leading axes.
        params: dict with `kernel` (`(input_dim, 3 * units)`), `bias`
            (`(2 * units,)` or `None`) and the `(gamma, beta)` pairs
            `gates_kernel_norm`, `candidate_kernel_norm`.
        epsilon: layer-norm epsilon.
        centered: whether `kernel` is already
            `center_kernel(kernel, (2 * units, units))`.

    Returns:
        The `(..., 3 * units)` input contributions to the gates and the
        candidate.
    """
    x_proj = ops.matmul(inputs, params["kernel"])
    units = ops.shape(x_proj)[-1] // 3
    gates = _normalize(x_proj[..., : 2 * units], params["gates_kernel_norm"], epsilon, centered)
    if params.get("bias") is not None:
        gates = gates + params["bias"]
    candidate = _normalize(
        x_proj[..., 2 * units :], params["candidate_kernel_norm"], epsilon, centered
    )
    return ops.concatenate([gates, candidate], axis=-1)


def layer_norm_gru_recurrence(
    projected,
    h_prev,
    params,
    epsilon=1e-3,
    activation=ops.tanh,
    recurrent_activation=ops.sigmoid,
    recurrent_input=None,
    centered=False,
):
    """The state-dependent part of the LN-GRU step.

    Args:
        projected: `(batch, 3 * units)`, `layer_norm_gru_input` of the step.
        h_prev: `(batch, units)`.
        params: dict with `recurrent_kernel` and the `(gamma, beta)` pairs
            `gates_recurrent_norm`, `candidate_recurrent_norm`.
        epsilon: layer-norm epsilon.
        activation: activation of the candidate.
        recurrent_activation: activation of the gates.
        recurrent_input: the state fed to the recurrent projections, when it
            differs from `h_prev` (recurrent dropout); defaults to `h_prev`.
        centered: whether `recurrent_kernel` is already
            `center_kernel(recurrent_kernel, (2 * units, units))`.

    Returns:
        `h_t`.
    """
    units = ops.shape(h_prev)[-1]
    if recurrent_input is None:
        recurrent_input = h_prev
    h_proj = ops.matmul(recurrent_input, params["recurrent_kernel"])
    gates = projected[..., : 2 * units] + _normalize(
        h_proj[..., : 2 * units], params["gates_recurrent_norm"], epsilon, centered
    )
    z, r = ops.split(gates, 2, axis=-1)
    candidate = activation(
        projected[..., 2 * units :]
        + recurrent_activation(r)
        * _normalize(
            h_proj[..., 2 * units :], params["candidate_recurrent_norm"], epsilon, centered
        )
    )
    update = recurrent_activation(z)
    return (1.0 - update) * h_prev + update * candidate


def layer_norm_gru_step(
    inputs,
    h_prev,
    params,
    epsilon=1e-3,
    activation=ops.tanh,
    recurrent_activation=ops.sigmoid,
    recurrent_input=None,
):
    """One step of the layer-normalized GRU.

    Every matrix product is normalized; the reset gate scales the normalized
    recurrent candidate term:

        [z, r] = LN_x1(x W_zr) + LN_h1(h U_zr) + b
        h_hat  = tanh(LN_x2(x W_h) + sigma(r) * LN_h2(h U_h))
        h_t    = (1 - sigma(z)) * h_prev + sigma(z) * h_hat

    It is `layer_norm_gru_input` followed by `layer_norm_gru_recurrence`.

    Args:
        inputs: `(batch, input_dim)`.
        h_prev: `(batch, units)`.
        params: dict with `kernel` (`(input_dim, 3 * units)`, columns
            `[z, r, h]`), `recurrent_kernel` (`(units, 3 * units)`), `bias`
            (`(2 * units,)` or `None`) and the `(gamma, beta)` pairs
            `gates_kernel_norm`, `gates_recurrent_norm`,
            `candidate_kernel_norm`, `candidate_recurrent_norm`.
        epsilon: layer-norm epsilon.
        activation: activation of the candidate.
        recurrent_activation: activation of the gates.
        recurrent_input: the state fed to the recurrent projections, when it
            differs from `h_prev` (recurrent dropout); defaults to `h_prev`.

    Returns:
        `h_t`.
    """
    projected = layer_norm_gru_input(inputs, params, epsilon)
    return layer_norm_gru_recurrence(
        projected, h_prev, params, epsilon, activation, recurrent_activation, recurrent_input
    )


def layer_norm_simple_rnn_input(inputs, params):
    """The state-free part of the LN simple-RNN step: `x W` (any leading axes)."""
    return ops.matmul(inputs, params["kernel"])


def layer_norm_simple_rnn_recurrence(
    projected, h_prev, params, epsilon=1e-3, activation=ops.tanh, centered=False
):
    """The state-dependent part: `f(LN(projected + h U))`, `projected = x W`.

    With `centered=True`, `W` and `U` are `center_kernel`'s output, so the sum
    has zero-mean features and its normalization takes no mean.
    """
    summed = projected + ops.matmul(h_prev, params["recurrent_kernel"])
    return activation(_normalize(summed, params["norm"], epsilon, centered))


def layer_norm_simple_rnn_step(inputs, h_prev, params, epsilon=1e-3, activation=ops.tanh):
    """One step of the layer-normalized simple RNN (paper eq. 4).

        h_t = f(LN(x W + h U))

    The normalization's `beta` plays the role of the bias. It is
    `layer_norm_simple_rnn_input` followed by
    `layer_norm_simple_rnn_recurrence`.

    Args:
        inputs: `(batch, input_dim)`.
        h_prev: `(batch, units)`.
        params: dict with `kernel`, `recurrent_kernel` and the `(gamma, beta)`
            pair `norm`.
        epsilon: layer-norm epsilon.
        activation: output activation.

    Returns:
        `h_t`.
    """
    projected = layer_norm_simple_rnn_input(inputs, params)
    return layer_norm_simple_rnn_recurrence(projected, h_prev, params, epsilon, activation)


class _LayerNormCell(keras.layers.Layer, DropoutRNNCell):
    """Arguments, weights and config shared by the layer-normalized cells."""

    def __init__(
        self,
        units,
        activation="tanh",
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        kernel_regularizer=None,
        recurrent_regularizer=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        dropout=0.0,
        recurrent_dropout=0.0,
        norm_gamma_initializer="ones",
        norm_beta_initializer="zeros",
        norm_epsilon=1e-3,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(units, int) or units <= 0:
            raise ValueError(
                f"{type(self).__name__} '{self.name}': `units` must be a "
                f"positive integer, got units={units!r}."
            )
        for arg, rate in (
            ("dropout", dropout),
            ("recurrent_dropout", recurrent_dropout),
        ):
            if not 0.0 <= rate < 1.0:
                raise ValueError(
                    f"{type(self).__name__} '{self.name}': `{arg}` must be in [0, 1), got {rate!r}."
                )
        if norm_epsilon <= 0:
            raise ValueError(
                f"{type(self).__name__} '{self.name}': `norm_epsilon` must be "
                f"positive, got {norm_epsilon!r}."
            )
        self.units = units
        self.activation = activations.get(activation)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.recurrent_constraint = constraints.get(recurrent_constraint)
        self.dropout = float(dropout)
        self.recurrent_dropout = float(recurrent_dropout)
        self.norm_gamma_initializer = initializers.get(norm_gamma_initializer)
        self.norm_beta_initializer = initializers.get(norm_beta_initializer)
        self.norm_epsilon = float(norm_epsilon)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed=seed)

    def _check_input_shape(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' expects one time step of "
                "shape (batch, features) with a known feature size, got "
                f"input shape {tuple(input_shape)}."
            )
        # Re-checked at every step: another feature size is a clear error.
        self.input_spec = keras.InputSpec(ndim=2, axes={-1: input_shape[-1]})
        return input_shape[-1]

    def _add_kernels(self, input_dim, columns):
        self.kernel = self.add_weight(
            shape=(input_dim, columns),
            name="kernel",
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, columns),
            name="recurrent_kernel",
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
            constraint=self.recurrent_constraint,
        )

    def _add_norm(self, name, size):
        gamma = self.add_weight(
            shape=(size,),
            name=f"{name}_gamma",
            initializer=self.norm_gamma_initializer,
        )
        beta = self.add_weight(
            shape=(size,),
            name=f"{name}_beta",
            initializer=self.norm_beta_initializer,
        )
        return gamma, beta

    # Sizes of the column groups normalized separately (None: all columns).
    norm_groups = None

    def centered_kernels(self):
        """The kernels as `center_kernel` leaves them, for `project` and
        `recur`: computed once per sequence, they spare every step's
        normalization its mean."""
        groups = self.norm_groups
        return {
            "kernel": center_kernel(self.kernel, groups),
            "recurrent_kernel": center_kernel(self.recurrent_kernel, groups),
        }

    def _kernel(self, kernels, name):
        """`kernels[name]` (centered) when given, else the weight as it is."""
        return getattr(self, name) if kernels is None else kernels[name]

    def project(self, inputs, training=False, kernels=None):
        """The state-free part of the step, for one step `(batch, features)`
        or a whole sequence `(batch, time, features)` at once (one dropout
        mask per sequence, as at every step). `kernels`: `centered_kernels()`
        (default: the kernels as they are, normalized with their mean)."""
        if training and self.dropout > 0:
            if len(inputs.shape) == 3:
                mask = ops.expand_dims(self.get_dropout_mask(inputs[:, 0]), 1)
            else:
                mask = self.get_dropout_mask(inputs)
            inputs = inputs * mask
        return self._input_fn(inputs, kernels)

    def _recurrent_input(self, h_prev, training):
        if training and self.recurrent_dropout > 0:
            return h_prev * self.get_recurrent_dropout_mask(h_prev)
        return h_prev

    def call(self, inputs, states, training=False):
        return self.recur(self.project(inputs, training), states, training)

    def get_initial_state(self, batch_size=None):
        sizes = self.state_size if isinstance(self.state_size, (list, tuple)) else [self.state_size]
        return [ops.zeros((batch_size, size), dtype=self.compute_dtype) for size in sizes]

    def get_config(self):
        config = {
            "units": self.units,
            "activation": activations.serialize(self.activation),
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "recurrent_regularizer": regularizers.serialize(self.recurrent_regularizer),
            "kernel_constraint": constraints.serialize(self.kernel_constraint),
            "recurrent_constraint": constraints.serialize(self.recurrent_constraint),
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "norm_gamma_initializer": initializers.serialize(self.norm_gamma_initializer),
            "norm_beta_initializer": initializers.serialize(self.norm_beta_initializer),
            "norm_epsilon": self.norm_epsilon,
            "seed": self.seed,
        }
        return {**super().get_config(), **config}


class _GatedLayerNormCell(_LayerNormCell):
    """Adds gate activation and gate bias arguments (LSTM and GRU)."""

    def __init__(
        self,
        units,
        recurrent_activation="sigmoid",
        use_bias=True,
        bias_initializer="zeros",
        bias_regularizer=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(units, **kwargs)
        self.recurrent_activation = activations.get(recurrent_activation)
        self.use_bias = use_bias
        self.bias_initializer = initializers.get(bias_initializer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.bias_constraint = constraints.get(bias_constraint)

    def _add_bias(self, size, initializer=None):
        if not self.use_bias:
            return None
        return self.add_weight(
            shape=(size,),
            name="bias",
            initializer=initializer or self.bias_initializer,
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint,
        )

    def get_config(self):
        config = {
            "recurrent_activation": activations.serialize(self.recurrent_activation),
            "use_bias": self.use_bias,
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "bias_constraint": constraints.serialize(self.bias_constraint),
        }
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="kzoo")
class LayerNormLSTMCell(_GatedLayerNormCell):
    """Cell of a layer-normalized LSTM, for use inside `keras.layers.RNN`.

    Implements `layer_norm_lstm_step`: the input and recurrent projections
    of the `4 * units` gate vector (Keras gate order `[i, f, c, o]`) are layer
    normalized separately, and the cell state is normalized before the output
    activation. Normalization statistics are per example and time step, so
    training and inference behave identically.

    Args:
        units: positive integer, dimensionality of the output space.
        activation: activation of the candidate and the output
            (default `"tanh"`).
        recurrent_activation: activation of the gates (default `"sigmoid"`).
        use_bias: whether to add a gate bias after the normalizations.
        kernel_initializer, recurrent_initializer, bias_initializer:
            initializers of the input kernel, recurrent kernel and bias.
        unit_forget_bias: if `True`, add 1 to the forget-gate bias at
            initialization (as `keras.layers.LSTMCell`).
        kernel_regularizer, recurrent_regularizer, bias_regularizer:
            regularizers of the same weights.
        kernel_constraint, recurrent_constraint, bias_constraint: constraints
            of the same weights.
        dropout: fraction of the input units to drop (one mask per sequence).
        recurrent_dropout: fraction of the recurrent units to drop.
        norm_gamma_initializer: initializer of the normalization gains
            (default ones, as in the paper).
        norm_beta_initializer: initializer of the normalization biases
            (default zeros).
        norm_epsilon: small float added to the variance.
        seed: random seed for dropout.

    Example:

    >>> cell = LayerNormLSTMCell(32)
    >>> rnn = keras.layers.RNN(cell, return_sequences=True)
    >>> tuple(rnn(np.zeros((4, 10, 8))).shape)
    (4, 10, 32)
    """

    def __init__(self, units, unit_forget_bias=True, **kwargs):
        super().__init__(units, **kwargs)
        self.unit_forget_bias = unit_forget_bias
        self.state_size = [self.units, self.units]
        self.output_size = self.units

    def build(self, input_shape):
        input_dim = self._check_input_shape(input_shape)
        self._add_kernels(input_dim, 4 * self.units)
        initializer = self.bias_initializer
        if self.unit_forget_bias:
            base = self.bias_initializer
            units = self.units

            def initializer(shape, dtype=None):
                return ops.concatenate(
                    [
                        base((units,), dtype=dtype),
                        ops.ones((units,), dtype=dtype),
                        base((2 * units,), dtype=dtype),
                    ]
                )

        self.bias = self._add_bias(4 * self.units, initializer)
        self.kernel_norm = self._add_norm("kernel_norm", 4 * self.units)
        self.recurrent_norm = self._add_norm("recurrent_norm", 4 * self.units)
        self.state_norm = self._add_norm("state_norm", self.units)

    def _input_fn(self, inputs, kernels=None):
        params = {
            "kernel": self._kernel(kernels, "kernel"),
            "bias": self.bias,
            "kernel_norm": self.kernel_norm,
        }
        return layer_norm_lstm_input(
            inputs, params, self.norm_epsilon, centered=kernels is not None
        )

    def recur(self, projected, states, training=False, kernels=None):
        """The state-dependent part of the step, on `project`'s output."""
        h_prev, c_prev = states
        h, c = layer_norm_lstm_recurrence(
            projected,
            self._recurrent_input(h_prev, training),
            c_prev,
            {
                "recurrent_kernel": self._kernel(kernels, "recurrent_kernel"),
                "recurrent_norm": self.recurrent_norm,
                "state_norm": self.state_norm,
            },
            self.norm_epsilon,
            self.activation,
            self.recurrent_activation,
            centered=kernels is not None,
        )
        return h, [h, c]

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}


@keras.saving.register_keras_serializable(package="kzoo")
class LayerNormGRUCell(_GatedLayerNormCell):
    """Cell of a layer-normalized GRU, for use inside `keras.layers.RNN`.

    Implements `layer_norm_gru_step`: update and reset gates from the
    separately normalized input and recurrent projections, and a candidate
    whose normalized recurrent term is scaled by the reset gate. The new state
    is `(1 - z) * h_prev + z * candidate` (docs/equations.md §S1). Kernel columns
    are ordered `[z, r, candidate]`; the bias covers the two gates only (the
    normalization betas bias the candidate).

    Args:
        units: positive integer, dimensionality of the output space.
        activation: activation of the candidate (default `"tanh"`).
        recurrent_activation: activation of the gates (default `"sigmoid"`).
        use_bias: whether to add a gate bias after the normalizations.
        kernel_initializer, recurrent_initializer, bias_initializer:
            initializers of the input kernel, recurrent kernel and bias.
        kernel_regularizer, recurrent_regularizer, bias_regularizer:
            regularizers of the same weights.
        kernel_constraint, recurrent_constraint, bias_constraint: constraints
            of the same weights.
        dropout: fraction of the input units to drop (one mask per sequence).
        recurrent_dropout: fraction of the recurrent units to drop.
        norm_gamma_initializer: initializer of the normalization gains.
        norm_beta_initializer: initializer of the normalization biases.
        norm_epsilon: small float added to the variance.
        seed: random seed for dropout.

    Example:

    >>> rnn = keras.layers.RNN(LayerNormGRUCell(16))
    >>> tuple(rnn(np.zeros((2, 5, 3))).shape)
    (2, 16)
    """

    def __init__(self, units, **kwargs):
        super().__init__(units, **kwargs)
        self.state_size = self.units
        self.output_size = self.units
        self.norm_groups = (2 * self.units, self.units)

    def build(self, input_shape):
        input_dim = self._check_input_shape(input_shape)
        self._add_kernels(input_dim, 3 * self.units)
        self.bias = self._add_bias(2 * self.units)
        self.gates_kernel_norm = self._add_norm("gates_kernel_norm", 2 * self.units)
        self.gates_recurrent_norm = self._add_norm("gates_recurrent_norm", 2 * self.units)
        self.candidate_kernel_norm = self._add_norm("candidate_kernel_norm", self.units)
        self.candidate_recurrent_norm = self._add_norm("candidate_recurrent_norm", self.units)

    def _input_fn(self, inputs, kernels=None):
        params = {
            "kernel": self._kernel(kernels, "kernel"),
            "bias": self.bias,
            "gates_kernel_norm": self.gates_kernel_norm,
            "candidate_kernel_norm": self.candidate_kernel_norm,
        }
        return layer_norm_gru_input(inputs, params, self.norm_epsilon, centered=kernels is not None)

    def recur(self, projected, states, training=False, kernels=None):
        """The state-dependent part of the step, on `project`'s output."""
        h_prev = states[0] if isinstance(states, (list, tuple)) else states
        h = layer_norm_gru_recurrence(
            projected,
            h_prev,
            {
                "recurrent_kernel": self._kernel(kernels, "recurrent_kernel"),
                "gates_recurrent_norm": self.gates_recurrent_norm,
                "candidate_recurrent_norm": self.candidate_recurrent_norm,
            },
            self.norm_epsilon,
            self.activation,
            self.recurrent_activation,
            recurrent_input=self._recurrent_input(h_prev, training),
            centered=kernels is not None,
        )
        return h, [h]


@keras.saving.register_keras_serializable(package="kzoo")
class LayerNormSimpleRNNCell(_LayerNormCell):
    """Cell of a layer-normalized simple RNN, `h_t = f(LN(x W + h U))`.

    One normalization of the summed input (paper eq. 4); its `beta` is the
    bias.

    Args:
        units: positive integer, dimensionality of the output space.
        activation: output activation (default `"tanh"`).
        kernel_initializer, recurrent_initializer: initializers of the input
            and recurrent kernels.
        kernel_regularizer, recurrent_regularizer: their regularizers.
        kernel_constraint, recurrent_constraint: their constraints.
        dropout: fraction of the input units to drop (one mask per sequence).
        recurrent_dropout: fraction of the recurrent units to drop.
        norm_gamma_initializer: initializer of the normalization gain.
        norm_beta_initializer: initializer of the normalization bias.
        norm_epsilon: small float added to the variance.
        seed: random seed for dropout.

    Example:

    >>> rnn = keras.layers.RNN(LayerNormSimpleRNNCell(8))
    >>> tuple(rnn(np.zeros((2, 5, 3))).shape)
    (2, 8)
    """

    def __init__(self, units, **kwargs):
        super().__init__(units, **kwargs)
        self.state_size = self.units
        self.output_size = self.units

    def build(self, input_shape):
        input_dim = self._check_input_shape(input_shape)
        self._add_kernels(input_dim, self.units)
        self.norm = self._add_norm("norm", self.units)

    def _input_fn(self, inputs, kernels=None):
        return layer_norm_simple_rnn_input(inputs, {"kernel": self._kernel(kernels, "kernel")})

    def recur(self, projected, states, training=False, kernels=None):
        """The state-dependent part of the step, on `project`'s output."""
        h_prev = states[0] if isinstance(states, (list, tuple)) else states
        h = layer_norm_simple_rnn_recurrence(
            projected,
            self._recurrent_input(h_prev, training),
            {
                "recurrent_kernel": self._kernel(kernels, "recurrent_kernel"),
                "norm": self.norm,
            },
            self.norm_epsilon,
            self.activation,
            centered=kernels is not None,
        )
        return h, [h]


_RNN_ARGS = (
    "return_sequences",
    "return_state",
    "go_backwards",
    "stateful",
    "unroll",
    "zero_output_for_mask",
    "activity_regularizer",
)
_BASE_LAYER_CONFIG = ("name", "trainable", "dtype")


class _LayerNormRNN(keras.layers.RNN):
    """A `keras.layers.RNN` that owns one cell of `cell_class`."""

    cell_class = None

    def __init__(self, units, precompute_inputs="auto", **kwargs):
        if precompute_inputs not in ("auto", True, False):
            raise ValueError(
                f"{type(self).__name__}: `precompute_inputs` must be 'auto', True or "
                f"False, got {precompute_inputs!r}."
            )
        cell_args = set(inspect.signature(_LayerNormCell.__init__).parameters)
        for klass in inspect.getmro(self.cell_class):
            if "__init__" in vars(klass):
                cell_args |= set(inspect.signature(klass.__init__).parameters)
        cell_kwargs = {
            k: kwargs.pop(k) for k in list(kwargs) if k in cell_args and k not in _BASE_LAYER_CONFIG
        }
        unknown = set(kwargs) - set(_RNN_ARGS) - {"name", "trainable", "dtype"}
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected arguments: {sorted(unknown)}.")
        cell = self.cell_class(
            units,
            dtype=kwargs.get("dtype"),
            trainable=kwargs.get("trainable", True),
            name="cell",
            **cell_kwargs,
        )
        super().__init__(cell, **kwargs)
        self.precompute_inputs = precompute_inputs
        self.input_spec = keras.layers.InputSpec(ndim=3)

    def build(self, sequences_shape, initial_state_shape=None):
        super().build(sequences_shape, initial_state_shape)
        # Checked by this layer, so the error names it rather than its cell.
        self.input_spec = keras.InputSpec(ndim=3, axes={-1: sequences_shape[-1]})

    def call(self, sequences, initial_state=None, mask=None, training=False):
        contracts.check_nonempty(self, sequences, (1,), "at least one time step")
        return super().call(sequences, initial_state=initial_state, mask=mask, training=training)

    def inner_loop(self, sequences, initial_state, mask, training=False):
        precompute = self.precompute_inputs
        if precompute == "auto":
            precompute = backend.precomputes_rnn_inputs()
        # Centered once per sequence, the kernels spare each normalization in
        # the loop its mean (forward and backward). A fused layer norm needs
        # no such help.
        kernels = None if backend.fused_normalization() else self.cell.centered_kernels()
        if precompute:
            # The input projection and its normalization do not depend on
            # the state: one batched op over batch x time, outside the loop,
            # which keeps only the recurrent product, its normalization and
            # the gates.
            sequences = self.cell.project(sequences, training=training, kernels=kernels)
        copy_states = keras.backend.backend() == "torch" and self.stateful

        def step(inputs, states):
            if copy_states:  # as keras.layers.RNN: no in-place autograd hazard
                states = [ops.copy(state) for state in states]
            if not precompute:
                inputs = self.cell.project(inputs, training=training, kernels=kernels)
            return self.cell.recur(inputs, states, training=training, kernels=kernels)

        return compat.rnn(
            step,
            sequences,
            initial_state,  # keras.layers.RNN.call passes a list
            go_backwards=self.go_backwards,
            mask=mask,
            unroll=self.unroll,
            input_length=sequences.shape[1],
            zero_output_for_mask=self.zero_output_for_mask,
            return_all_outputs=self.return_sequences,
        )

    @property
    def units(self):
        return self.cell.units

    @property
    def activation(self):
        return self.cell.activation

    @property
    def dropout(self):
        return self.cell.dropout

    @property
    def recurrent_dropout(self):
        return self.cell.recurrent_dropout

    @property
    def norm_epsilon(self):
        return self.cell.norm_epsilon

    def get_config(self):
        config = super().get_config()
        del config["cell"]
        cell_config = {
            k: v for k, v in self.cell.get_config().items() if k not in _BASE_LAYER_CONFIG
        }
        return {**config, **cell_config, "precompute_inputs": self.precompute_inputs}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="kzoo")
class LayerNormLSTM(_LayerNormRNN):
    """Layer-normalized LSTM layer: `keras.layers.RNN(LayerNormLSTMCell(...))`.

    Takes every argument of `LayerNormLSTMCell` and of `keras.layers.RNN`
    (`return_sequences`, `return_state`, `go_backwards`, `stateful`, `unroll`,
    `zero_output_for_mask`), and supports masking like `keras.layers.LSTM`.

    Args:
        precompute_inputs: whether to compute the state-free part of every
            step (input projection and its normalization) for the whole
            sequence before the loop, as one batched op; the results are the
            same either way. `"auto"` (default): on PyTorch only, where it
            measured faster (`kzoo.backend.precomputes_rnn_inputs`).

    Contract: `(batch, time, features)` with at least one step and the
    feature size fixed at build (re-checked at every call: another size is a
    `ValueError` naming the layer). NaN or inf values propagate: layer
    normalization of a non-finite vector is NaN.

    Example:

    >>> layer = LayerNormLSTM(32, return_sequences=True)
    >>> tuple(layer(np.zeros((4, 10, 8))).shape)
    (4, 10, 32)
    """

    cell_class = LayerNormLSTMCell


@keras.saving.register_keras_serializable(package="kzoo")
class LayerNormGRU(_LayerNormRNN):
    """Layer-normalized GRU layer: `keras.layers.RNN(LayerNormGRUCell(...))`.

    Takes every argument of `LayerNormGRUCell` and of `keras.layers.RNN`,
    and `precompute_inputs` (see `LayerNormLSTM`).

    Contract: `(batch, time, features)` with at least one step and the
    feature size fixed at build (re-checked at every call: another size is a
    `ValueError` naming the layer). NaN or inf values propagate: layer
    normalization of a non-finite vector is NaN.

    Example:

    >>> tuple(LayerNormGRU(16)(np.zeros((2, 5, 3))).shape)
    (2, 16)
    """

    cell_class = LayerNormGRUCell


@keras.saving.register_keras_serializable(package="kzoo")
class LayerNormSimpleRNN(_LayerNormRNN):
    """Layer-normalized simple RNN layer.

    Takes every argument of `LayerNormSimpleRNNCell` and of
    `keras.layers.RNN`, and `precompute_inputs` (see `LayerNormLSTM`).

    Contract: `(batch, time, features)` with at least one step and the
    feature size fixed at build (re-checked at every call: another size is a
    `ValueError` naming the layer). NaN or inf values propagate: layer
    normalization of a non-finite vector is NaN.

    Example:

    >>> tuple(LayerNormSimpleRNN(8)(np.zeros((2, 5, 3))).shape)
    (2, 8)
    """

    cell_class = LayerNormSimpleRNNCell

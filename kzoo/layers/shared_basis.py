"""Deeply shared filter bases (Kang et al.; docs/equations.md §S6).

A stage's 3×3 convolutions share one bank of `s` basis filters `B`
(`FilterBasis`); each `SharedBasisConv2D` owns only `s × (filters − u)`
coefficients, a 1×1 convolution over the basis responses, and optionally `u`
unique 3×3 filters of its own. The layer is the 3×3 convolution whose kernel is
`B · coefficients` (plus the unique filters), with far fewer parameters when
the basis is shared by several layers.

Sharing is plain Python object sharing: pass the same `FilterBasis` to several
`SharedBasisConv2D` layers. The `.keras` format and kzoo presets keep it shared
(the configs mark it as one object) and save its variables once.

`OrthogonalBasis` is the regularizer `λ · mean((B̂ B̂ᵀ − I)²)` on the basis
flattened to one row per filter; it keeps the recursively shared filters near
an orthonormal set, so their norms can neither vanish nor explode. Unlike
`keras.regularizers.OrthogonalRegularizer`, which normalizes the rows and
penalizes only their correlations, it also pins each row's norm to 1.
"""

import zlib

import keras
from keras import ops

from kzoo.layers import contracts


def _check_images(layer, input_shape):
    if len(input_shape) != 4 or input_shape[-1] is None:
        raise ValueError(
            f"{layer.__class__.__name__} expects images (batch, H, W, channels) with known "
            f"channels; got shape {tuple(input_shape)}."
        )


def _strided(shape, strides):
    """Batch and spatial sizes after a 'same' convolution with `strides`."""
    return (shape[0], *[None if s is None else -(-s // strides) for s in shape[1:3]])


def orthogonality_penalty(basis):
    """`mean((B̂ B̂ᵀ − I)²)` with `B̂` the basis as one row per filter.

    Args:
        basis: `(k, k, in_channels, s)` kernel of `s` basis filters.
    """
    rows = ops.transpose(ops.reshape(basis, (-1, basis.shape[-1])))
    gram = ops.matmul(rows, ops.transpose(rows))
    return ops.mean(ops.square(gram - ops.eye(basis.shape[-1], dtype=gram.dtype)))


def compose_kernel(basis, coefficients):
    """The equivalent 3×3 kernel `B · coefficients`, `(k, k, in, filters)`."""
    return ops.einsum("hwis,sf->hwif", basis, coefficients)


@keras.saving.register_keras_serializable(package="kzoo")
class OrthogonalBasis(keras.regularizers.Regularizer):
    """`strength · mean((B̂ B̂ᵀ − I)²)` on a filter basis (docs/equations.md §S6).

    Args:
        strength: λ (the reference code uses 10).

    Example:

    >>> basis = FilterBasis(8, kernel_regularizer=OrthogonalBasis(10.0))
    """

    def __init__(self, strength=10.0):
        self.strength = strength

    def __call__(self, basis):
        return self.strength * orthogonality_penalty(basis)

    def get_config(self):
        return {"strength": self.strength}


@keras.saving.register_keras_serializable(package="kzoo")
class FilterBasis(keras.layers.Layer):
    """A bank of `num_filters` k×k filters shared by `SharedBasisConv2D` layers.

    Built by the first layer that uses it; every layer using it must see the
    same number of input channels.

    Args:
        num_filters: number of basis filters `s`.
        kernel_size: spatial size `k` of the filters.
        kernel_initializer: initializer of the basis.
        kernel_regularizer: regularizer of the basis, e.g. `OrthogonalBasis()`.

    Contract: images `(batch, H, W, channels)`, channels fixed at build.
    Integer images are cast to the compute dtype; an empty batch or image
    gives an empty answer; NaN or inf values propagate.

    Example:

    >>> basis = FilterBasis(16)
    >>> conv1 = SharedBasisConv2D(32, basis)
    >>> conv2 = SharedBasisConv2D(32, basis)
    >>> tuple(conv2(conv1(np.zeros((1, 8, 8, 32)))).shape)
    (1, 8, 8, 32)
    """

    def __init__(
        self,
        num_filters,
        kernel_size=3,
        kernel_initializer="he_normal",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_filters = num_filters
        self.kernel_size = kernel_size
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        _check_images(self, input_shape)
        self.kernel = self.add_weight(
            shape=(self.kernel_size, self.kernel_size, input_shape[-1], self.num_filters),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            name="kernel",
        )
        self.input_spec = keras.InputSpec(ndim=4, axes={-1: input_shape[-1]})

    def call(self, inputs, strides=1):
        inputs = contracts.float_inputs(self, inputs)
        if 0 in tuple(inputs.shape):  # TensorFlow's CPU conv gets empty shapes wrong
            return ops.zeros(self.compute_output_spec(inputs, strides).shape, self.compute_dtype)
        return ops.conv(inputs, self.kernel, strides=strides, padding="same")

    def compute_output_spec(self, inputs, strides=1):
        shape = (*_strided(inputs.shape, strides), self.num_filters)
        return keras.KerasTensor(shape, self.compute_dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "num_filters": self.num_filters,
            "kernel_size": self.kernel_size,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        }


def _serialize_shared(basis):
    """The basis' config, marked as one object wherever it appears.

    Keras' `.keras` loading (inside its object-sharing scope) deserializes a
    config that carries `shared_object_id` once and reuses the object for
    every other config with the same id. Keras marks repeated objects itself,
    but only on the first config dict it recorded, which nested `get_config`
    copies drop; so the id is set here on every occurrence, derived from the
    basis' name (unique unless the user gives two bases one name; loading the
    weights then fails, as one basis is missing).
    """
    config = keras.saving.serialize_keras_object(basis)
    config["shared_object_id"] = zlib.crc32(basis.name.encode())
    return config


@keras.saving.register_keras_serializable(package="kzoo")
class SharedBasisConv2D(keras.layers.Layer):
    """A k×k convolution as 1×1 coefficients over a shared `FilterBasis`.

    Output channels: `filters − num_unique` linear combinations of the basis
    responses, then `num_unique` responses of the layer's own k×k filters.

    Args:
        filters: output channels.
        basis: the `FilterBasis` (shared with other layers).
        num_unique: number of the layer's own (unshared) filters.
        strides: stride of the convolution.
        use_bias: add a bias.
        coefficient_initializer: initializer of the coefficients.
        kernel_initializer: initializer of the unique filters.
        kernel_regularizer: regularizer of the coefficients and unique filters.

    Contract: as `FilterBasis`; the channels are re-checked at every call (a
    6-channel input to a layer built for 3 is a `ValueError`, not a grouped
    convolution).

    Example:

    >>> basis = FilterBasis(8)
    >>> layer = SharedBasisConv2D(16, basis, num_unique=2)
    >>> tuple(layer(np.zeros((1, 8, 8, 4))).shape)
    (1, 8, 8, 16)
    """

    def __init__(
        self,
        filters,
        basis,
        num_unique=0,
        strides=1,
        use_bias=False,
        coefficient_initializer="glorot_uniform",
        kernel_initializer="he_normal",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(basis, dict):
            basis = keras.saving.deserialize_keras_object(basis)
        if not isinstance(basis, FilterBasis):
            raise ValueError(f"SharedBasisConv2D expects a FilterBasis; got {basis!r}.")
        if not 0 <= num_unique < filters:
            raise ValueError(
                f"SharedBasisConv2D needs 0 <= num_unique < filters={filters}; "
                f"got num_unique={num_unique}."
            )
        self.filters = filters
        self.basis = basis
        self.num_unique = num_unique
        self.strides = strides
        self.use_bias = use_bias
        self.coefficient_initializer = keras.initializers.get(coefficient_initializer)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        _check_images(self, input_shape)
        if not self.basis.built:
            self.basis.build(input_shape)
        elif self.basis.kernel.shape[2] != input_shape[-1]:
            raise ValueError(
                f"SharedBasisConv2D {self.name!r}: its FilterBasis {self.basis.name!r} was built "
                f"for {self.basis.kernel.shape[2]} input channels; got {input_shape[-1]}."
            )
        self.coefficients = self.add_weight(
            shape=(self.basis.num_filters, self.filters - self.num_unique),
            initializer=self.coefficient_initializer,
            regularizer=self.kernel_regularizer,
            name="coefficients",
        )
        self.unique_kernel = None
        if self.num_unique:
            k = self.basis.kernel_size
            self.unique_kernel = self.add_weight(
                shape=(k, k, input_shape[-1], self.num_unique),
                initializer=self.kernel_initializer,
                regularizer=self.kernel_regularizer,
                name="unique_kernel",
            )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")
        # Re-checked at every call: a 6-channel input to a layer built for 3
        # would otherwise run as a grouped convolution.
        self.input_spec = keras.InputSpec(ndim=4, axes={-1: input_shape[-1]})

    def call(self, inputs):
        inputs = contracts.float_inputs(self, inputs)
        if 0 in tuple(inputs.shape):  # an empty batch or image: an empty answer
            return ops.zeros(self.compute_output_shape(inputs.shape), self.compute_dtype)
        # The basis may run under another dtype policy than this layer.
        responses = ops.cast(self.basis(inputs, strides=self.strides), self.compute_dtype)
        outputs = ops.matmul(responses, self.coefficients)
        if self.unique_kernel is not None:
            unique = ops.conv(inputs, self.unique_kernel, strides=self.strides, padding="same")
            outputs = ops.concatenate([outputs, unique], axis=-1)
        if self.bias is not None:
            outputs = outputs + self.bias
        return outputs

    def equivalent_kernel(self):
        """The k×k kernel this layer applies, `(k, k, in, filters)`."""
        kernel = compose_kernel(self.basis.kernel, self.coefficients)
        if self.unique_kernel is None:
            return kernel
        return ops.concatenate([kernel, self.unique_kernel], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*_strided(input_shape, self.strides), self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "basis": _serialize_shared(self.basis),
            "num_unique": self.num_unique,
            "strides": self.strides,
            "use_bias": self.use_bias,
            "coefficient_initializer": keras.initializers.serialize(self.coefficient_initializer),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        }

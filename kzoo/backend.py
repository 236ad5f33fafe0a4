"""The few backend-specific pieces of kzoo, in one place.

Everything else in kzoo is written with `keras.ops`. What `keras.ops` cannot
express is here:

- sparse matrices: a `tf.SparseTensor` on TensorFlow, a
  `jax.experimental.sparse.BCOO` on JAX (both multiplied through
  `keras.ops.matmul`, which accepts them); PyTorch has no sparse support in
  Keras, so callers take a dense path there;
- gradients of a model's compiled loss outside `fit` (`loss_gradients`),
  with each backend's autodiff.
"""

import keras


def supports_sparse():
    """Whether the current backend has sparse matrices usable in `keras.ops`."""
    return keras.backend.backend() in ("tensorflow", "jax")


def sparse_matrix(indices, values, num_rows, num_cols):
    """A 2-D sparse matrix of the current backend.

    Args:
        indices: int tensor `(nnz, 2)` of (row, column) positions, in row-major
            order.
        values: float tensor `(nnz,)`; gradients flow to it.
        num_rows: number of rows (a Python int or a scalar tensor).
        num_cols: number of columns.

    Returns:
        A `tf.SparseTensor` (TensorFlow) or a `BCOO` matrix (JAX), usable as the
        first argument of `keras.ops.matmul`.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        shape = tf.stack([tf.cast(num_rows, "int64"), tf.cast(num_cols, "int64")])
        return tf.SparseTensor(tf.cast(indices, "int64"), values, shape)
    if backend == "jax":
        from jax.experimental import sparse

        return sparse.BCOO(
            (values, indices.astype("int32")),
            shape=(int(num_rows), int(num_cols)),
            indices_sorted=True,
            unique_indices=True,
        )
    raise ValueError(
        f"Sparse matrices are not available on the {backend!r} backend; "
        "use a dense implementation there."
    )


def loss_gradients(model, x, y, sample_weight=None):
    """Gradients of a compiled model's loss on one batch, without updating it.

    The forward pass runs in training mode inside a `keras.StatelessScope`, so
    no variable (batch-norm statistics, metrics, running means) changes.

    Args:
        model: a compiled Keras model.
        x, y: one batch of inputs and targets.
        sample_weight: optional sample weights.

    Returns:
        `(loss, gradients)`: a float and a list of numpy arrays aligned with
        `model.trainable_variables`.
    """
    import numpy as np

    trainable = model.trainable_variables
    trainable_ids = {id(v) for v in trainable}
    others = [v for v in model.variables if id(v) not in trainable_ids]

    def loss_fn(values):
        mapping = list(zip(trainable, values)) + [(v, v.value) for v in others]
        with keras.StatelessScope(state_mapping=mapping):
            y_pred = model(x, training=True)
            return model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)

    backend = keras.backend.backend()
    values = [v.value for v in trainable]
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(values)
            loss = loss_fn(values)
        grads = tape.gradient(loss, values, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    elif backend == "jax":
        import jax

        loss, grads = jax.value_and_grad(loss_fn)(values)
    elif backend == "torch":
        import torch

        values = [v.detach().clone().requires_grad_(True) for v in values]
        loss = loss_fn(values)
        grads = torch.autograd.grad(loss, values, allow_unused=True)
        grads = [torch.zeros_like(v) if g is None else g for v, g in zip(values, grads)]
    else:
        raise ValueError(f"loss_gradients: unsupported backend {backend!r}.")
    return float(keras.ops.convert_to_numpy(loss)), [
        np.asarray(keras.ops.convert_to_numpy(g)) for g in grads
    ]

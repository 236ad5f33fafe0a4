"""The few backend-specific pieces of kzoo, in one place.

Everything else in kzoo is written with `keras.ops`. What `keras.ops` cannot
express is here:

- sparse matrices: a `tf.SparseTensor` on TensorFlow, a
  `jax.experimental.sparse.BCOO` on JAX (both multiplied through
  `keras.ops.matmul`, which accepts them); PyTorch has no sparse support in
  Keras, so callers take a dense path there.
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

"""Batch normalization whose moving statistics only ever see finite batches.

Keras' `BatchNormalization` updates its moving mean and variance from every
training batch. One example with a NaN (a corrupt record, a division by zero
upstream) makes the batch's mean NaN, the moving statistics NaN, and from
then on every inference output NaN, on clean data too; nothing says so.
`FiniteBatchNormalization` is the same layer, number for number, except that
a batch whose statistics are not finite leaves the moving statistics as they
were. The batch's own outputs are still computed from its statistics (so the
NaN reaches that step's loss and is visible).
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kzoo")
class FiniteBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that skips non-finite statistic updates.

    Takes the arguments of `keras.layers.BatchNormalization`. In training,
    when the batch's mean or variance has a non-finite entry, the moving mean
    and variance keep their previous values (all channels: the batch is
    treated as corrupt). Otherwise it is Keras' layer exactly.

    Example:

    >>> norm = FiniteBatchNormalization()
    >>> x = np.ones((4, 3), "float32"); x[0, 0] = np.nan
    >>> _ = norm(x, training=True)
    >>> bool(np.all(np.isfinite(ops.convert_to_numpy(norm.moving_mean))))
    True
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        # Copies: PyTorch assigns in place, which would change these tensors.
        old = [ops.copy(self.moving_mean.value), ops.copy(self.moving_variance.value)]
        outputs = super().call(inputs, training=training, mask=mask)
        new = [self.moving_mean.value, self.moving_variance.value]
        finite = ops.all(ops.isfinite(new[0])) & ops.all(ops.isfinite(new[1]))
        for variable, before, after in zip((self.moving_mean, self.moving_variance), old, new):
            variable.assign(ops.where(finite, after, before))
        return outputs

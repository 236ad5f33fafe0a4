"""`GradientFlow`: per-layer gradient norms during `fit`, for TensorBoard."""

import keras
import numpy as np

from kzoo import backend


class GradientFlow(keras.callbacks.Callback):
    """Logs per-layer gradient norms during training, with vanishing/exploding flags.

    Every `every` epochs (at epoch end) the gradients of the compiled loss on
    a fixed monitoring batch are computed, without touching the model's state
    (`kzoo.backend.loss_gradients`), and for each layer with trainable weights
    the global L2 norm of its gradients is

    - added to the epoch `logs` as `grad_norm/<layer>` (so `History`,
      `CSVLogger` and `EarlyStopping` see it), with
      `grad_norm/vanishing_layers` and `grad_norm/exploding_layers`, the
      numbers of layers below `vanishing_threshold` or above
      `exploding_threshold`;
    - written, when `log_dir` is given, as TensorBoard scalars
      (`grad_norm/<layer>`) and histograms of the gradient values
      (`gradients/<layer>`), on any backend.

    Use it when a model "does not learn": a layer whose norm is orders of
    magnitude below the others is where the signal dies.

    Args:
        data: `(x, y)` or `(x, y, sample_weight)`: the monitoring batch.
        log_dir: TensorBoard log directory (a `gradient_flow` run is written
            under it), or `None` to only log to `logs`.
        every: compute every this many epochs.
        vanishing_threshold: norms below it flag a vanishing gradient.
        exploding_threshold: norms above it flag an exploding gradient.
        histograms: also write gradient histograms to TensorBoard.
        verbose: print the flagged layers.

    Attributes:
        history: list of `{layer: norm}` dicts, one per computation.

    Example:

    >>> model.fit(x, y, epochs=5, callbacks=[  # doctest: +SKIP
    ...     GradientFlow((x[:64], y[:64]), log_dir="logs")])
    """

    def __init__(
        self,
        data,
        log_dir=None,
        every=1,
        vanishing_threshold=1e-7,
        exploding_threshold=1e3,
        histograms=True,
        verbose=0,
    ):
        super().__init__()
        if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
            raise ValueError("GradientFlow: `data` must be (x, y) or (x, y, sample_weight).")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"GradientFlow: `every` must be a positive int, got {every!r}.")
        if not 0 <= vanishing_threshold < exploding_threshold:
            raise ValueError("GradientFlow: need 0 <= vanishing_threshold < exploding_threshold.")
        self.data = tuple(data)
        self.log_dir = log_dir
        self.every = every
        self.vanishing_threshold = vanishing_threshold
        self.exploding_threshold = exploding_threshold
        self.histograms = histograms
        self.verbose = verbose
        self.history = []
        self._writer = None

    def layer_gradient_norms(self):
        """`({layer name: gradient norm}, {layer name: flat gradients})` on the batch."""
        if not self.model.compiled:
            raise ValueError("GradientFlow needs a compiled model (it differentiates its loss).")
        _, grads = backend.loss_gradients(self.model, *self.data)
        by_id = {id(v): g for v, g in zip(self.model.trainable_variables, grads)}
        norms, values = {}, {}
        for layer in self.model.layers:
            layer_grads = [by_id[id(v)] for v in layer.trainable_variables if id(v) in by_id]
            if layer_grads:
                flat = np.concatenate([g.ravel() for g in layer_grads])
                norms[layer.name] = float(np.linalg.norm(flat))
                values[layer.name] = flat
        return norms, values

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        norms, values = self.layer_gradient_norms()
        self.history.append(norms)
        vanishing = [n for n, v in norms.items() if v < self.vanishing_threshold]
        exploding = [n for n, v in norms.items() if v > self.exploding_threshold]
        if logs is not None:
            logs.update({f"grad_norm/{name}": value for name, value in norms.items()})
            logs["grad_norm/vanishing_layers"] = len(vanishing)
            logs["grad_norm/exploding_layers"] = len(exploding)
        if self.verbose and (vanishing or exploding):
            print(f"GradientFlow epoch {epoch + 1}: vanishing {vanishing}, exploding {exploding}")
        if self.log_dir:
            self._write(epoch, norms, values, len(vanishing), len(exploding))

    def _write(self, step, norms, values, vanishing, exploding):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(f"{self.log_dir}/gradient_flow")
        with self._writer.as_default(step=step):
            for name, norm in norms.items():
                tf.summary.scalar(f"grad_norm/{name}", norm)
                if self.histograms:
                    tf.summary.histogram(f"gradients/{name}", values[name])
            tf.summary.scalar("grad_norm/vanishing_layers", vanishing)
            tf.summary.scalar("grad_norm/exploding_layers", exploding)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

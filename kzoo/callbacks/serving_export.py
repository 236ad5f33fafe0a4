"""`ServingExport`: export the best model for TF Serving during `fit`."""

import sys

import keras
import numpy as np

from kzoo.serving import export
from kzoo.serving import exported_versions


class ServingExport(keras.callbacks.Callback):
    """Exports the model as a new TF Serving version whenever it improves.

    At the end of each epoch the monitored value is compared with the best so
    far; on improvement the model is written with `kzoo.serving.export` to
    `base_dir/<name>/serving/<next version>/` (atomically, never overwriting
    a version), the value is recorded beside it, and `base_dir/models.config`
    is regenerated, so a running TF Serving instance that watches `base_dir`
    picks the new version up.

    TF Serving serves the highest version. So "the best so far" starts from
    the value recorded for the highest version already in `base_dir`, not
    from scratch: a second `fit` (a new callback, another process) publishes
    only what beats what is being served. If that version has no recorded
    value for `monitor` (exported some other way), training stops with a
    `ValueError` rather than guess; pass `allow_worse=True` to publish
    regardless.

    Args:
        base_dir: the serving base directory (what TF Serving mounts).
        monitor: the logged quantity to monitor, e.g. `"val_loss"`.
        mode: `"min"`, `"max"` or `"auto"` (max for names containing `acc`,
            `auc`, `precision` or `recall`, min otherwise).
        name: serving model name; default: the model's name.
        sample_inputs: dict of input name to array recorded as the reference
            inputs of each export (see `kzoo.serving.export`).
        min_delta: the smallest change counted as an improvement.
        allow_worse: compare only within this `fit`, ignoring the versions
            already in `base_dir` (may publish a worse model).
        verbose: print a line per export.
        outputs: the outputs `serving_default` returns (default: all; see
            `kzoo.serving.export`), e.g. `["segmentation_logits"]` for an RWN.

    Attributes:
        exported: list of the `Path`s written during training.

    Example:

    >>> model.fit(x, y, validation_data=(x_val, y_val),  # doctest: +SKIP
    ...           callbacks=[ServingExport("serving_models")])
    """

    def __init__(
        self,
        base_dir,
        monitor="val_loss",
        mode="auto",
        name=None,
        sample_inputs=None,
        min_delta=0.0,
        allow_worse=False,
        verbose=1,
        outputs=None,
    ):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"ServingExport: mode must be 'auto', 'min' or 'max', got {mode!r}.")
        if mode == "auto":
            maximize = any(k in monitor for k in ("acc", "auc", "precision", "recall"))
            mode = "max" if maximize else "min"
        self.base_dir = base_dir
        self.monitor = monitor
        self.mode = mode
        self.name = name
        self.sample_inputs = sample_inputs
        self.min_delta = abs(min_delta)
        self.allow_worse = allow_worse
        self.verbose = verbose
        self.outputs = outputs
        self.best = None
        self.exported = []

    def on_train_begin(self, logs=None):
        self.best = None
        if self.allow_worse:
            return
        name = self.name or self.model.name
        versions = exported_versions(self.base_dir, name)
        if not versions:
            return
        served = max(versions)
        if self.monitor not in versions[served]:
            raise ValueError(
                f"ServingExport: {self.base_dir}/{name}/serving/{served}, the version TF "
                f"Serving serves, has no recorded {self.monitor!r}, so a new export cannot "
                "be shown to be better; pass allow_worse=True to publish regardless."
            )
        self.best = versions[served][self.monitor]
        if self.verbose:
            print(
                f"ServingExport: version {served} is served with {self.monitor} = "
                f"{self.best:.5g}; exporting only what beats it.",
                file=sys.stderr,
            )

    def _improved(self, value):
        if not np.isfinite(value):  # a NaN/inf score never publishes a model
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise ValueError(
                f"ServingExport: {self.monitor!r} is not in the epoch logs "
                f"(available: {', '.join(sorted(logs)) or 'none'}); pass "
                "validation data for val_* quantities."
            )
        value = float(np.asarray(logs[self.monitor]))
        if not self._improved(value):
            return
        self.best = value
        path = export(
            self.model,
            self.base_dir,
            name=self.name,
            sample_inputs=self.sample_inputs,
            metrics={self.monitor: value},
            outputs=self.outputs,
        )
        self.exported.append(path)
        if self.verbose:
            print(
                f"\nEpoch {epoch + 1}: {self.monitor} = {value:.5g}, exported {path}",
                file=sys.stderr,
            )

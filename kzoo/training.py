"""Training and evaluation of zoo models on their tasks.

A task couples a dataset with the loss, metrics, optimizer and schedule that
reproduce a zoo preset. `train` fits a registered model with `model.fit` and
stores it in the zoo; `evaluate` scores a model on the task's test split.
"""

import contextlib
import dataclasses
import inspect
import math
import sys

import keras
import numpy as np
from keras import ops

from kzoo import backend
from kzoo.applications import presets
from kzoo.applications import zoo
from kzoo.datasets import digits
from kzoo.datasets import stdlib_text
from kzoo.datasets import texture_patches
from kzoo.datasets import texture_scenes
from kzoo.layers import AffinityLoss


@dataclasses.dataclass(frozen=True)
class Task:
    """How a zoo model is trained and evaluated.

    Attributes:
        name: task name.
        dataset: dataset name recorded in the preset.
        load: `load(split) -> (x, y)` numpy arrays.
        loss: Keras loss, or `loss(model)` returning the model's losses.
        metrics: Keras metrics, or `metrics(model)` returning them.
        learning_rate: Adam learning rate.
        epochs: default number of epochs.
        batch_size: batch size.
        clipnorm: gradient-norm clipping for Adam (or `None`).
        augment: train on randomly flipped and shifted images and masks.
        fine_tune_learning_rate: Adam learning rate for models that start from
            another preset (`init_from`); default `learning_rate`.
        headline: the metrics that sum a model up (`kzoo list`, `kzoo
            evaluate`), in order of preference; the first one present in the
            results is shown.
        derived: `derived(results)` returns metrics computed from the
            evaluated ones (e.g. bits per character from the loss).
    """

    name: str
    dataset: str
    load: object
    loss: str
    metrics: tuple
    learning_rate: float
    epochs: int
    batch_size: int
    clipnorm: float = None
    augment: bool = False
    fine_tune_learning_rate: float = None
    headline: tuple = ("accuracy",)
    derived: object = None

    def headline_metric(self, results):
        """The name of this task's headline metric among `results`' keys."""
        return next(k for k in (*self.headline, "loss") if k in results)

    def optimizer(self, fine_tune=False):
        rate = self.fine_tune_learning_rate if fine_tune else None
        return keras.optimizers.Adam(rate or self.learning_rate, clipnorm=self.clipnorm)

    def compile(self, model, optimizer=None):
        loss = self.loss(model) if callable(self.loss) else self.loss
        metrics = self.metrics(model) if callable(self.metrics) else list(self.metrics)
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics)

    def targets(self, model, y):
        """`y` for each of the model's outputs (the label map feeds them all)."""
        if len(model.outputs) == 1:
            return y
        return {name: y for name in model.output_names}


def _load_chars(split):
    # The training text is capped to keep `kzoo train` well under an hour on
    # two CPU cores; validation and test use their whole (disjoint) modules.
    max_chars = {"train": 1_200_000, "validation": 250_000}.get(split)
    return stdlib_text.load(split, sequence_length=64, max_chars=max_chars)


def _segmentation_loss(model):
    loss = {"segmentation_logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
    if "affinities" in model.output_names:
        loss["affinities"] = AffinityLoss(model.get_layer("affinities").radius)
    return loss if len(model.outputs) > 1 else loss["segmentation_logits"]


def _segmentation_metrics(model):
    logits = (
        model.outputs[model.output_names.index("segmentation_logits")]
        if len(model.outputs) > 1
        else model.outputs[0]
    )
    metrics = [
        keras.metrics.MeanIoU(logits.shape[-1], sparse_y_pred=False, name="mean_iou"),
        keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy"),
    ]
    return {"segmentation_logits": metrics} if len(model.outputs) > 1 else metrics


class _Augmented(keras.utils.PyDataset):
    """Shuffled batches with flips and shifts applied to images and masks alike."""

    def __init__(self, x, y, batch_size, seed, targets):
        super().__init__()
        self.x, self.y, self.batch_size, self.targets = x, y, batch_size, targets
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x))

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index):
        idx = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        x, y = texture_scenes.augment(self.x[idx], self.y[idx], self.rng)
        return x, self.targets(y)

    def on_epoch_end(self):
        self.order = self.rng.permutation(len(self.x))


TASKS = {
    "digits_rows": Task(
        name="digits_rows",
        dataset=f"{digits.NAME} (scikit-learn load_digits, 70/15/15 stratified)",
        load=digits.load,
        loss="sparse_categorical_crossentropy",
        metrics=("accuracy",),
        learning_rate=3e-3,
        epochs=40,
        batch_size=32,
    ),
    "stdlib_chars": Task(
        name="stdlib_chars",
        dataset=f"{stdlib_text.NAME} (top-level stdlib *.py, split by file name hash)",
        load=_load_chars,
        loss="sparse_categorical_crossentropy",
        metrics=("accuracy",),
        learning_rate=2e-3,
        epochs=3,
        batch_size=64,
        clipnorm=1.0,
        headline=("bits_per_char",),
        derived=lambda results: {"bits_per_char": results["loss"] / math.log(2.0)},
    ),
    "texture_patches": Task(
        name="texture_patches",
        dataset=f"{texture_patches.NAME} (32x32 patches of 6 scikit-image textures; "
        "train/validation/test from disjoint bands of each image; 3600/600/900)",
        load=texture_patches.load,
        loss="sparse_categorical_crossentropy",
        metrics=("accuracy",),
        learning_rate=2e-3,
        epochs=30,
        batch_size=64,
    ),
    "texture_scenes": Task(
        name="texture_scenes",
        dataset=f"{texture_scenes.NAME} (TFDS builder composing scikit-image photos and "
        "textures; 1000/150/150)",
        load=texture_scenes.load,
        loss=_segmentation_loss,
        metrics=_segmentation_metrics,
        learning_rate=2e-3,
        epochs=30,
        batch_size=16,
        augment=True,
        fine_tune_learning_rate=2e-4,
        headline=("mean_iou", "segmentation_logits_mean_iou"),
    ),
}


def builder_args(name):
    """The full builder arguments of a registered model (defaults filled), JSON-like."""
    item = zoo.entry(name)
    bound = inspect.signature(item.builder).bind(**item.builder_args)
    bound.apply_defaults()
    return zoo.preset_args(bound.arguments)


def evaluate(model, task_name, split="test", verbose="auto"):
    """Scores `model` on a task split; returns a dict of metrics.

    The task's derived metrics (e.g. bits per character) are added.
    """
    task = TASKS[task_name]
    x, y = task.load(split)
    if not model.compiled:
        task.compile(model)
    results = model.evaluate(
        x, task.targets(model, y), batch_size=task.batch_size, verbose=verbose, return_dict=True
    )
    results = {k: float(v) for k, v in results.items()}
    if task.derived is not None:
        results.update(task.derived(results))
    results["examples"] = int(len(x))
    return results


def _initialize_from(model, preset):
    """Copies the weights of the preset's layers into same-named layers."""
    zoo.transfer_weights(presets.load_preset(preset), model)


def _split_evenly(engine, batch_size, *arrays):
    """Drops the last `len % replicas` examples so every batch splits evenly
    across the replicas (JAX's sharding requires it)."""
    replicas = backend.num_replicas(engine)
    if batch_size % replicas:
        raise ValueError(
            f"Batch size {batch_size} does not split across {replicas} replicas; "
            "use a number of devices that divides it."
        )
    return [a[: len(a) - len(a) % replicas] for a in arrays]


def train(
    name,
    zoo_dir=None,
    epochs=None,
    overwrite=False,
    seed=0,
    callbacks=(),
    verbose="auto",
    distribute=False,
    devices=None,
):
    """Trains a registered model with `model.fit` and saves it as a preset.

    Args:
        name: a name from `kzoo.applications.list_models()`.
        zoo_dir: the zoo directory; the preset goes to `zoo_dir/name`
            (default: the user's zoo, `kzoo.applications.presets.user_zoo()`).
        epochs: number of epochs (default: the task's).
        overwrite: replace an existing preset.
        seed: random seed (weights initialization and shuffling).
        callbacks: extra Keras callbacks for `fit`.
        verbose: Keras verbosity.
        distribute: train data-parallel on the backend's engine
            (`kzoo.backend.data_parallel`: `keras.distribution` on JAX,
            `tf.distribute` on TensorFlow); the task's batch size is the
            global batch, split across the replicas.
        devices: the devices to use when `distribute` (default: all).

    Returns:
        `(model, metadata)`.
    """
    item = zoo.entry(name)
    task = TASKS[item.task]
    target = presets.training_target(name, zoo_dir, overwrite)
    epochs = presets.epochs_or_default(epochs, task.epochs)
    scope = backend.data_parallel(devices) if distribute else contextlib.nullcontext()
    with scope as engine:
        keras.utils.set_random_seed(seed)
        model = zoo.get(name, training=True)
        if item.init_from:
            _initialize_from(model, item.init_from)
        optimizer = task.optimizer(fine_tune=bool(item.init_from))
        task.compile(model, optimizer)
        x, y = task.load("train")
        x_val, y_val = task.load("validation")
        if distribute:
            x, y, x_val, y_val = _split_evenly(engine, task.batch_size, x, y, x_val, y_val)
        targets = lambda labels: task.targets(model, labels)  # noqa: E731
        if task.augment:
            data = {"x": _Augmented(x, y, task.batch_size, seed, targets)}
        else:
            data = {"x": x, "y": y, "batch_size": task.batch_size}
        with backend.global_batch_statistics(model):
            history = model.fit(
                **data,
                validation_data=(x_val, targets(y_val)),
                epochs=epochs,
                callbacks=[
                    keras.callbacks.EarlyStopping(
                        monitor="val_loss", patience=8, restore_best_weights=True
                    ),
                    *callbacks,
                ],
                verbose=verbose,
            )
    if item.train_args:
        # Same weights, the entry's inference setup (e.g. the converged walk).
        trained, model = model, zoo.get(name)
        model.set_weights(trained.get_weights())
    metadata = {
        "builder": item.builder.__name__,
        "builder_args": builder_args(name),
        "description": item.description,
        "task": task.name,
        "dataset": task.dataset,
        "training_command": f"KERAS_BACKEND={keras.backend.backend()} kzoo train "
        f"{name} --epochs {epochs} --seed {seed}"
        + (" --distribute data-parallel" if distribute else ""),
        "initialized_from": item.init_from,
        "distribution": {"engine": type(engine).__name__, "replicas": backend.num_replicas(engine)}
        if distribute
        else None,
        "training": {
            "epochs_run": len(history.history["loss"]),
            "batch_size": task.batch_size,
            "optimizer": f"Adam(lr={float(ops.convert_to_numpy(optimizer.learning_rate)):g}, "
            f"clipnorm={task.clipnorm})",
            "builder_args_while_training": item.train_args or None,
            "augmentation": "random flips and shifts" if task.augment else None,
            "train_examples": int(len(x)),
        },
        "metrics": {
            "validation": evaluate(model, task.name, "validation", verbose=0),
            "test": evaluate(model, task.name, "test", verbose=0),
        },
    }
    metadata = presets.save_preset(model, target, metadata, overwrite=overwrite)
    print(f"Saved preset {target}", file=sys.stderr)
    return model, metadata


def sample_inputs(name, count=4):
    """A few held-out test inputs for a registered model, as a numpy array."""
    x, _ = TASKS[zoo.entry(name).task].load("test")
    return np.asarray(x[:count])

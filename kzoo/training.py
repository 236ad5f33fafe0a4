"""Training and evaluation of zoo models on their tasks.

A task couples a dataset with the loss, metrics, optimizer and schedule that
reproduce a zoo preset. `train` fits a registered model with `model.fit` and
stores it in the zoo; `evaluate` scores a model on the task's test split.
"""

import dataclasses
import inspect
import math
import sys
from pathlib import Path

import keras
import numpy as np

from kzoo.applications import presets
from kzoo.applications import zoo
from kzoo.datasets import digits
from kzoo.datasets import stdlib_text


@dataclasses.dataclass(frozen=True)
class Task:
    """How a zoo model is trained and evaluated.

    Attributes:
        name: task name.
        dataset: dataset name recorded in the preset.
        load: `load(split) -> (x, y)` numpy arrays.
        loss: Keras loss.
        metrics: Keras metrics.
        learning_rate: Adam learning rate.
        epochs: default number of epochs.
        batch_size: batch size.
        clipnorm: gradient-norm clipping for Adam (or `None`).
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

    def optimizer(self):
        return keras.optimizers.Adam(self.learning_rate, clipnorm=self.clipnorm)


def _load_chars(split):
    # The training text is capped to keep `kzoo train` well under an hour on
    # two CPU cores; validation and test use their whole (disjoint) modules.
    max_chars = {"train": 1_200_000, "validation": 250_000}.get(split)
    return stdlib_text.load(split, sequence_length=64, max_chars=max_chars)


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
    ),
}


def builder_args(name):
    """The full builder arguments of a registered model (defaults filled)."""
    item = zoo.entry(name)
    bound = inspect.signature(item.builder).bind(**item.builder_args)
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k not in ("weights", "name")}


def evaluate(model, task_name, split="test", verbose="auto"):
    """Scores `model` on a task split; returns a dict of metrics.

    For language models the loss in bits per character is added.
    """
    task = TASKS[task_name]
    x, y = task.load(split)
    if not model.compiled:
        model.compile(loss=task.loss, metrics=list(task.metrics))
    results = model.evaluate(
        x, y, batch_size=task.batch_size, verbose=verbose, return_dict=True
    )
    results = {k: float(v) for k, v in results.items()}
    if task_name == "stdlib_chars":
        results["bits_per_char"] = results["loss"] / math.log(2.0)
    results["examples"] = int(len(x))
    return results


def train(
    name,
    zoo_dir="saved_models",
    epochs=None,
    overwrite=False,
    seed=0,
    callbacks=(),
    verbose="auto",
):
    """Trains a registered model with `model.fit` and saves it as a preset.

    Args:
        name: a name from `kzoo.applications.list_models()`.
        zoo_dir: the zoo directory; the preset goes to `zoo_dir/name`.
        epochs: number of epochs (default: the task's).
        overwrite: replace an existing preset.
        seed: random seed (weights initialization and shuffling).
        callbacks: extra Keras callbacks for `fit`.
        verbose: Keras verbosity.

    Returns:
        `(model, metadata)`.
    """
    item = zoo.entry(name)
    task = TASKS[item.task]
    target = Path(zoo_dir) / name
    if (target / presets.METADATA_FILE).exists() and not overwrite:
        raise FileExistsError(
            f"{target} already holds a preset; pass overwrite=True "
            "(CLI: --overwrite) to retrain it."
        )
    epochs = epochs or task.epochs
    keras.utils.set_random_seed(seed)
    model = zoo.get(name)
    model.compile(optimizer=task.optimizer(), loss=task.loss, metrics=list(task.metrics))
    x, y = task.load("train")
    x_val, y_val = task.load("validation")
    history = model.fit(
        x,
        y,
        validation_data=(x_val, y_val),
        epochs=epochs,
        batch_size=task.batch_size,
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=8, restore_best_weights=True
            ),
            *callbacks,
        ],
        verbose=verbose,
    )
    metadata = {
        "builder": item.builder.__name__,
        "builder_args": builder_args(name),
        "description": item.description,
        "task": task.name,
        "dataset": task.dataset,
        "training_command": f"KERAS_BACKEND={keras.backend.backend()} kzoo train "
        f"{name} --epochs {epochs} --seed {seed}",
        "training": {
            "epochs_run": len(history.history["loss"]),
            "batch_size": task.batch_size,
            "optimizer": f"Adam(lr={task.learning_rate}, clipnorm={task.clipnorm})",
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

"""The zoo's tasks: how each artifact is trained and scored.

A `Task` couples a dataset with the loss, metrics, optimizer and schedule that
reproduce a model preset; a `MetaTask` couples a problem family with the
meta-training schedule of a learned optimizer. Both own their metrics: the
headline one (`kzoo list`, `kzoo evaluate`) and derived ones (bits per
character from a character model's loss).

Tasks are data: datasets, losses and Keras are imported when a task is used.
"""

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Task:
    """How a zoo model is trained and evaluated.

    Attributes:
        name: task name.
        dataset: dataset description recorded in the preset.
        load: `load(split) -> (x, y)` numpy arrays.
        loss: Keras loss, or `loss(model)` returning the model's losses.
        metrics: Keras metrics, or `metrics(model)` returning them.
        learning_rate: Adam learning rate.
        epochs: default number of epochs.
        batch_size: batch size.
        clipnorm: gradient-norm clipping for Adam (or `None`).
        augment: `augment(x, y, batch_size, seed)` returning a `tf.data.Dataset`
            of augmented training batches, or `None` to train on `x, y` as is.
        fine_tune_learning_rate: Adam learning rate for models that start from
            another preset (`init_from`); default `learning_rate`.
        headline: the metrics that sum a model up, in order of preference;
            the first one present in the results is shown.
        derived: `derived(results)` returns metrics computed from the
            evaluated ones (e.g. bits per character from the loss).
    """

    name: str
    dataset: str
    load: object
    loss: object
    metrics: object
    learning_rate: float
    epochs: int
    batch_size: int
    clipnorm: float = None
    augment: object = None
    fine_tune_learning_rate: float = None
    headline: tuple = ("accuracy",)
    derived: object = None

    def headline_metric(self, results):
        """The name of this task's headline metric among `results`' keys."""
        return next(k for k in (*self.headline, "loss") if k in results)

    def optimizer(self, fine_tune=False):
        """The task's Adam (at the fine-tuning rate if `fine_tune`)."""
        import keras

        rate = self.fine_tune_learning_rate if fine_tune else None
        return keras.optimizers.Adam(rate or self.learning_rate, clipnorm=self.clipnorm)

    def compile(self, model, optimizer=None):
        """Compiles `model` with the task's loss and metrics."""
        loss = self.loss(model) if callable(self.loss) else self.loss
        metrics = self.metrics(model) if callable(self.metrics) else list(self.metrics)
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics)

    def targets(self, model, y):
        """`y` for each of the model's outputs (the label map feeds them all)."""
        if len(model.outputs) == 1:
            return y
        return {name: y for name in model.output_names}


@dataclasses.dataclass(frozen=True)
class MetaTask:
    """How a learned optimizer is meta-trained and scored.

    Attributes:
        name: task name.
        family: the problem family (`kzoo.optimizers.problems.FAMILIES`).
        dataset: description recorded in the preset.
        epochs: default maximum number of epochs.
        episodes_per_epoch: episodes per epoch.
        patience: early-stopping patience in epochs.
        headline: as `Task.headline`.
    """

    name: str
    family: str
    dataset: str
    epochs: int
    episodes_per_epoch: int
    patience: int
    headline: tuple = ("final_loss",)

    def headline_metric(self, results):
        """The name of this task's headline metric among `results`' keys."""
        return next(k for k in self.headline if k in results)


def _dataset(module):
    def load(split):
        import importlib

        return importlib.import_module(f"kzoo.datasets.{module}").load(split)

    return load


def _load_chars(split):
    # The training text is capped to keep `kzoo train` well under an hour on
    # two CPU cores; validation and test use their whole (disjoint) modules.
    from kzoo.datasets import stdlib_text

    max_chars = {"train": 1_200_000, "validation": 250_000}.get(split)
    return stdlib_text.load(split, sequence_length=64, max_chars=max_chars)


def _augmented_scenes(x, y, batch_size, seed):
    """keras-cv random flips and shifts of scenes and masks, in tf.data."""
    from kzoo.datasets import texture_scenes

    return texture_scenes.augmented_batches(x, y, batch_size, seed)


def _segmentation_loss(model):
    import keras

    from kzoo.layers import AffinityLoss

    loss = {"segmentation_logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
    if "affinities" in model.output_names:
        loss["affinities"] = AffinityLoss(model.get_layer("affinities").radius)
    return loss if len(model.outputs) > 1 else loss["segmentation_logits"]


def _segmentation_metrics(model):
    import keras

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


TASKS = {
    "digits_rows": Task(
        name="digits_rows",
        dataset="sklearn_digits_rows (scikit-learn load_digits, 70/15/15 stratified)",
        load=_dataset("digits"),
        loss="sparse_categorical_crossentropy",
        metrics=("accuracy",),
        learning_rate=3e-3,
        epochs=40,
        batch_size=32,
    ),
    "stdlib_chars": Task(
        name="stdlib_chars",
        dataset="python_stdlib_source (top-level stdlib *.py, split by file name hash)",
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
        dataset="kzoo_texture_patches (32x32 patches of 6 scikit-image textures; "
        "train/validation/test from disjoint bands of each image; 3600/600/900)",
        load=_dataset("texture_patches"),
        loss="sparse_categorical_crossentropy",
        metrics=("accuracy",),
        learning_rate=2e-3,
        epochs=30,
        batch_size=64,
    ),
    "texture_scenes": Task(
        name="texture_scenes",
        dataset="kzoo_texture_scenes (TFDS builder composing scikit-image photos and "
        "textures; 1000/150/150)",
        load=_dataset("texture_scenes"),
        loss=_segmentation_loss,
        metrics=_segmentation_metrics,
        learning_rate=2e-3,
        epochs=30,
        batch_size=16,
        augment=_augmented_scenes,
        fine_tune_learning_rate=2e-4,
        headline=("mean_iou", "segmentation_logits_mean_iou"),
    ),
    "meta_quadratic": MetaTask(
        name="meta_quadratic",
        family="quadratic",
        dataset="random 10-d quadratics ||W theta - y||^2 (W, y, theta_0 standard normal)",
        epochs=100,
        episodes_per_epoch=20,
        patience=20,
    ),
    "meta_digits_mlp": MetaTask(
        name="meta_digits_mlp",
        family="digits_mlp",
        dataset="MLPs with 20 sigmoid units on minibatches of 128 of scikit-learn's digits",
        epochs=40,
        episodes_per_epoch=20,
        patience=10,
    ),
    "meta_general": MetaTask(
        name="meta_general",
        family="general",
        dataset="14 families of small problems on 5 local datasets (quadratics; MLPs, CNNs "
        "and linear models on the digits, wine, synthetic classification and regression; "
        "kzoo.optimizers.problems.general_training_distribution)",
        epochs=200,
        episodes_per_epoch=10,
        patience=30,
    ),
    "meta_general_noisy": MetaTask(
        name="meta_general_noisy",
        family="general_noisy",
        dataset="the 14 families of meta_general and 8 whose loss keeps a floor (label noise, "
        "overlapping classes, noisy targets) on 6 more local datasets "
        "(kzoo.optimizers.problems.noisy_training_distribution)",
        epochs=200,
        episodes_per_epoch=10,
        patience=30,
    ),
    "meta_general_rescaled": MetaTask(
        name="meta_general_rescaled",
        family="general_rescaled",
        dataset="the 22 families of meta_general_noisy, every parameter tensor stored divided "
        "by a scale drawn log-uniformly from [0.1, 10] "
        "(kzoo.optimizers.problems.rescaled_training_distribution)",
        epochs=200,
        episodes_per_epoch=10,
        patience=30,
    ),
}

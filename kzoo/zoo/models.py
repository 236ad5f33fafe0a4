"""Zoo models: builders with presets, training, scoring and export.

`preset_builder` gives every model builder KerasHub's conventions:
`weights=` (a preset checked against the builder's own arguments),
`Builder.from_preset(name, num_classes=None, compile=True)` and
`Builder.presets`. The kind hooks `train`, `evaluate` and `export` are what
`kzoo train`/`evaluate`/`export` call for a model entry (see
`kzoo.zoo.registry`).
"""

import contextlib
import functools
import inspect
import sys

import keras
import numpy as np
from keras import ops

from kzoo import backend
from kzoo.zoo import presets
from kzoo.zoo import registry
from kzoo.zoo.tasks import TASKS


def preset_builder(free_args=()):
    """Declares a builder's preset contract once.

    The decorated function builds the model from its own arguments; the
    builder it returns also takes `weights` (`None`, a preset name or a
    preset directory) and loads that preset's weights after checking that it
    was made by this builder with the same arguments: all of them but `name`
    and `free_args`, the arguments that do not change the weights (e.g. an
    RWN's walk, which may differ at inference). It also gets `from_preset`
    (see `from_preset`) and `presets`, its registered presets.

    Args:
        free_args: names of the arguments a preset may have been made with
            other values of.
    """

    def decorate(build):
        signature = inspect.signature(build)
        defaults = {
            k: p.default for k, p in signature.parameters.items() if p.default is not p.empty
        }

        @functools.wraps(build)
        def builder(*args, weights=None, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            model = build(*bound.args, **bound.kwargs)
            if weights is not None:
                checked = {
                    k: v for k, v in preset_args(bound.arguments).items() if k not in free_args
                }
                presets.load_weights(
                    model, weights, build.__name__, builder_args=checked, defaults=defaults
                )
            return model

        builder.free_args = tuple(free_args)
        builder.presets = registry.Presets(build.__name__)
        builder.from_preset = functools.partial(from_preset, builder)
        builder.from_preset.__doc__ = (
            f"`{build.__name__}` from a zoo preset; see `kzoo.zoo.models.from_preset`."
        )
        return builder

    return decorate


def preset_args(arguments):
    """Builder arguments as a preset records them: JSON-like, without `name`."""
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in arguments.items()
        if k not in ("name", "weights")
    }


def builder_args(name):
    """The full builder arguments of a registered model (defaults filled), JSON-like."""
    item = registry.entry(name)
    bound = inspect.signature(item.load_builder()).bind(**item.args)
    bound.apply_defaults()
    return preset_args(bound.arguments)


def from_preset(builder, preset, num_classes=None, compile=True, **kwargs):
    """Builds `builder`'s model with a preset's weights, ready to `fit`.

    Args:
        builder: the builder the preset must have been made by.
        preset: a zoo preset name or a preset directory (a path).
        num_classes: a new number of classes: the output layer is built anew
            (initialized as usual) and every other layer keeps the preset's
            weights, for fine-tuning on new labels. `None` keeps the preset's.
        compile: compile with the preset's recorded training setup (its
            task's optimizer, loss and metrics); `False` returns it uncompiled.
        **kwargs: other builder arguments that may differ at inference (e.g.
            an RWN's walk); the others must match the preset's.

    Returns:
        A `keras.Model` named after the preset.

    Raises:
        PresetError: if the preset is corrupt, of another builder, or
            `num_classes` is given to a builder without classes.
    """
    directory, metadata = presets.read_metadata(preset)
    if metadata.get("builder") != builder.__name__:
        raise presets.PresetError(
            f"Preset {str(preset)!r} holds a {metadata.get('builder')}, not a "
            f"{builder.__name__}; {builder.__name__}.presets lists its presets."
        )
    recorded = {**metadata["builder_args"], **kwargs}
    name = metadata.get("name", directory.name)
    if num_classes is None or num_classes == recorded.get("num_classes"):
        model = builder(**recorded, weights=preset, name=name)
    else:
        if "num_classes" not in inspect.signature(builder).parameters:
            raise presets.PresetError(f"{builder.__name__} has no classes to replace.")
        pretrained = builder(**recorded, weights=preset, name=name)
        model = builder(**{**recorded, "num_classes": int(num_classes)}, name=name)
        kept = transfer_weights(pretrained, model)
        if not kept:
            raise presets.PresetError(f"No layer of preset {str(preset)!r} fits the new head.")
    if compile:
        task = TASKS[metadata["task"]]
        task.compile(model, task.optimizer())
    return model


def transfer_weights(source, target):
    """Copies `source`'s weights into `target` wherever their shapes agree.

    Top-level layers are paired by name. A pair whose weights differ in shape
    (e.g. a nested model around a replaced classifier) is descended into when
    both are containers of the same class with as many sublayers: those are
    paired by position, since nested models are auto-named per instance.

    Returns:
        The `/`-joined paths of the layers copied.
    """
    copied = []
    for layer in target.layers:
        if not layer.weights:
            continue
        try:
            other = source.get_layer(layer.name)
        except ValueError:
            continue
        _transfer_layer(other, layer, layer.name, copied)
    return copied


def _transfer_layer(source, target, path, copied):
    values = source.get_weights()
    if [tuple(v.shape) for v in target.weights] == [v.shape for v in values]:
        target.set_weights(values)
        copied.append(path)
        return
    inner, other_inner = getattr(target, "layers", None), getattr(source, "layers", None)
    if type(source) is not type(target) or not inner or len(inner) != len(other_inner or []):
        return
    for layer, other in zip(inner, other_inner):
        if layer.weights and type(layer) is type(other):
            _transfer_layer(other, layer, f"{path}/{layer.name}", copied)


def _model_entry(item):
    """`item` (an `Entry`), checked to be a model."""
    if item.kind != "model":
        raise ValueError(f"{item.name!r} is a learned optimizer, not a model.")
    return item


def list_models(filter=None, pretrained=None):
    """Names of the registered models (`kzoo.zoo.list_entries(kind="model")`).

    Args:
        filter: a glob pattern on the name (e.g. `"*texture_scenes"`).
        pretrained: `True` for those with a preset in the zoo, `False` for
            those without, `None` for all.

    Example:

    >>> "lnlstm_digits" in list_models("*digits", pretrained=True)
    True
    """
    return registry.list_entries(filter, kind="model", pretrained=pretrained)


def get(name, weights=None, training=False):
    """Builds a registered model, optionally with pretrained weights.

    Args:
        name: a name from `kzoo.applications.list_models()`.
        weights: `None` (random initialization), `"pretrained"` (the zoo's
            preset of the same name), a preset name, or a preset directory.
        training: build with the entry's `train_args` (its training setup).

    Returns:
        A `keras.Model` named `name`.

    Example:

    >>> get("lnlstm_digits", weights="pretrained").output_shape
    (None, 10)
    """
    item = _model_entry(registry.entry(name))
    if weights == "pretrained":
        weights = name
    args = {**item.args, **(item.train_args if training else {})}
    return item.load_builder()(name=name, weights=weights, **args)


def score(model, task_name, split="test", verbose="auto"):
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


def sample_inputs(name, count=4):
    """A few held-out test inputs for a registered model, as a numpy array."""
    x, _ = TASKS[_model_entry(registry.entry(name)).task].load("test")
    return np.asarray(x[:count])


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
    entry,
    zoo_dir=None,
    epochs=None,
    overwrite=False,
    seed=0,
    log_dir=None,
    distribute=False,
    devices=None,
    callbacks=(),
    verbose="auto",
):
    """Trains a registered model with `model.fit` and saves it as a preset
    (the model kind's hook; `kzoo.zoo.train(name, ...)` calls it).

    Args:
        entry: the model's `Entry`.
        zoo_dir: the zoo directory; the preset goes to `zoo_dir/name`
            (default: the user's zoo, `kzoo.zoo.presets.user_zoo()`).
        epochs: number of epochs (default: the task's).
        overwrite: replace an existing preset.
        seed: random seed (weights initialization and shuffling).
        log_dir: if set, TensorBoard logs go there (`keras.callbacks.TensorBoard`).
        distribute: train data-parallel on the backend's engine
            (`kzoo.backend.data_parallel`: `keras.distribution` on JAX,
            `tf.distribute` on TensorFlow); the task's batch size is the
            global batch, split across the replicas.
        devices: the devices to use when `distribute` (default: all).
        callbacks: extra Keras callbacks for `fit`.
        verbose: Keras verbosity.

    Returns:
        `(model, metadata)`.
    """
    item = _model_entry(entry)
    name, task = item.name, TASKS[item.task]
    target = presets.training_target(name, zoo_dir, overwrite)
    epochs = presets.epochs_or_default(epochs, task.epochs)
    callbacks = [*callbacks, *([keras.callbacks.TensorBoard(str(log_dir))] if log_dir else [])]
    scope = backend.data_parallel(devices) if distribute else contextlib.nullcontext()
    with scope as engine:
        keras.utils.set_random_seed(seed)
        model = get(name, training=True)
        if item.init_from:
            transfer_weights(presets.load_preset(item.init_from), model)
        optimizer = task.optimizer(fine_tune=bool(item.init_from))
        task.compile(model, optimizer)
        x, y = task.load("train")
        x_val, y_val = task.load("validation")
        if distribute:
            x, y, x_val, y_val = _split_evenly(engine, task.batch_size, x, y, x_val, y_val)
        targets = lambda labels: task.targets(model, labels)  # noqa: E731
        if task.augment:
            batches = task.augment(x, y, task.batch_size, seed)
            data = {"x": batches.map(lambda images, masks: (images, targets(masks)))}
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
        trained, model = model, get(name)
        model.set_weights(trained.get_weights())
    metadata = {
        "builder": item.builder_name,
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
            "augmentation": task.augment.__doc__.splitlines()[0] if task.augment else None,
            "train_examples": int(len(x)),
        },
        "metrics": {
            "validation": score(model, task.name, "validation", verbose=0),
            "test": score(model, task.name, "test", verbose=0),
        },
    }
    metadata = presets.save_preset(model, target, metadata, overwrite=overwrite)
    print(f"Saved preset {target}", file=sys.stderr)
    return model, metadata


def evaluate(entry, verbose=0):
    """Scores the zoo's preset of a model on its task's test split (the model
    kind's hook; `kzoo.zoo.evaluate(name)` calls it)."""
    item = _model_entry(entry)
    return score(get(item.name, weights="pretrained"), item.task, verbose=verbose)


def export(entry, base_dir="saved_models", version=None):
    """Exports the zoo's preset of a model for TF Serving, with held-out test
    inputs as its reference inputs (the model kind's hook); returns the
    version directory."""
    from kzoo import serving

    item = _model_entry(entry)
    model = get(item.name, weights="pretrained")
    inputs = {model.inputs[0].name: sample_inputs(item.name)}
    return serving.export(
        model, base_dir, version=version, sample_inputs=inputs, outputs=item.serving_outputs
    )

"""The model registry: named models, their builders and their tasks.

Registering a model also gives its builder KerasHub's conventions:
`Builder.from_preset(name, num_classes=None, compile=True)` and
`Builder.presets`, the registered presets of that builder.
"""

import dataclasses
import fnmatch
import functools
import inspect

from kzoo.applications import presets


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """A registered model.

    Attributes:
        name: registry name, also the default preset name and model name.
        builder: the builder function (e.g. `LNLSTMClassifier`).
        builder_args: keyword arguments passed to the builder.
        task: name of the training/evaluation task in `kzoo.training`.
        description: one line for `kzoo list`.
        train_args: builder arguments that differ when training (e.g. the
            RWN trains with a one-step walk and infers with the converged
            one); they must not change the weights.
        init_from: a zoo preset whose weights initialize the layers of the
            same name before training (the RWN starts from its FCN twin, as
            the paper's starts from DeepLab).
    """

    name: str
    builder: object
    builder_args: dict
    task: str
    description: str
    train_args: dict = dataclasses.field(default_factory=dict)
    init_from: str = None


_REGISTRY = {}


def preset_builder(free_args=()):
    """Declares a builder's preset contract once.

    The decorated function builds the model from its own arguments; the
    builder it returns also takes `weights` (`None`, a preset name or a
    preset directory) and loads that preset's weights after checking that it
    was made by this builder with the same arguments: all of them but `name`
    and `free_args`, the arguments that do not change the weights (e.g. an
    RWN's walk, which may differ at inference).

    Args:
        free_args: names of the arguments a preset may have been made with
            other values of.
    """

    def decorate(build):
        signature = inspect.signature(build)

        @functools.wraps(build)
        def builder(*args, weights=None, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            model = build(*bound.args, **bound.kwargs)
            if weights is not None:
                checked = {
                    k: v for k, v in preset_args(bound.arguments).items() if k not in free_args
                }
                presets.load_weights(model, weights, builder=build.__name__, builder_args=checked)
            return model

        builder.free_args = tuple(free_args)
        return builder

    return decorate


def preset_args(arguments):
    """Builder arguments as a preset records them: JSON-like, without `name`."""
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in arguments.items()
        if k not in ("name", "weights")
    }


def register_model(
    name, builder, task, description, train_args=None, init_from=None, **builder_args
):
    """Registers `builder(**builder_args)` under `name`."""
    if name in _REGISTRY:
        raise ValueError(f"Model {name!r} is already registered.")
    _REGISTRY[name] = ZooEntry(
        name, builder, builder_args, task, description, dict(train_args or {}), init_from
    )
    if not hasattr(builder, "from_preset"):
        builder.from_preset = lambda preset, **kwargs: from_preset(builder, preset, **kwargs)
        builder.from_preset.__doc__ = (
            f"`{builder.__name__}` from a zoo preset; see `kzoo.applications.zoo.from_preset`."
        )
        builder.presets = {}
    builder.presets[name] = description


def list_models(filter=None, pretrained=None):
    """Names of the registered models.

    Args:
        filter: a glob pattern on the name (e.g. `"*texture_scenes"`), or
            `None` for all.
        pretrained: `True` for those with a preset in the zoo, `False` for
            those without, `None` for all.

    Example:

    >>> "lnlstm_digits" in list_models("*digits", pretrained=True)
    True
    """
    names = sorted(n for n in _REGISTRY if filter is None or fnmatch.fnmatchcase(n, filter))
    if pretrained is None:
        return names
    available = set(presets.available_presets())
    return [n for n in names if (n in available) == bool(pretrained)]


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
    from kzoo import training  # the tasks; training imports this module

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
        task = training.TASKS[metadata["task"]]
        task.compile(model, task.optimizer())
    return model


def transfer_weights(source, target):
    """Copies the weights of `source`'s layers into `target`'s same-named
    layers whose weights have the same shapes; returns the names copied."""
    copied = []
    for layer in target.layers:
        if not layer.weights:
            continue
        try:
            other = source.get_layer(layer.name)
        except ValueError:
            continue
        values = other.get_weights()
        if [tuple(v.shape) for v in layer.weights] == [v.shape for v in values]:
            layer.set_weights(values)
            copied.append(layer.name)
    return copied


def entry(name):
    """The `ZooEntry` registered under `name`."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}; registered models: {', '.join(list_models())}.")
    return _REGISTRY[name]


def get(name, weights=None, training=False):
    """Builds a registered model, optionally with pretrained weights.

    Args:
        name: a name from `list_models()`.
        weights: `None` (random initialization), `"pretrained"` (the zoo's
            preset of the same name), a preset name, or a preset directory.
        training: build with the entry's `train_args` (its training setup).

    Returns:
        A `keras.Model` named `name`.

    Example:

    >>> get("lnlstm_digits", weights="pretrained").output_shape
    (None, 10)
    """
    item = entry(name)
    if weights == "pretrained":
        weights = name
    args = {**item.builder_args, **(item.train_args if training else {})}
    return item.builder(name=name, weights=weights, **args)


def has_pretrained(name):
    """Whether the zoo holds a preset for the registered model `name`."""
    return name in presets.available_presets()

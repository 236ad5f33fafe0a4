"""The model registry: named models, their builders and their tasks."""

import dataclasses

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
    """

    name: str
    builder: object
    builder_args: dict
    task: str
    description: str


_REGISTRY = {}


def register_model(name, builder, task, description, **builder_args):
    """Registers `builder(**builder_args)` under `name`."""
    if name in _REGISTRY:
        raise ValueError(f"Model {name!r} is already registered.")
    _REGISTRY[name] = ZooEntry(name, builder, builder_args, task, description)


def list_models():
    """Names of all registered models.

    Example:

    >>> "lnlstm_digits" in list_models()
    True
    """
    return sorted(_REGISTRY)


def entry(name):
    """The `ZooEntry` registered under `name`."""
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown model {name!r}; registered models: {', '.join(list_models())}."
        )
    return _REGISTRY[name]


def get(name, weights=None):
    """Builds a registered model, optionally with pretrained weights.

    Args:
        name: a name from `list_models()`.
        weights: `None` (random initialization), `"pretrained"` (the zoo's
            preset of the same name), a preset name, or a preset directory.

    Returns:
        A `keras.Model` named `name`.

    Example:

    >>> model = get("lnlstm_digits", weights="pretrained")  # doctest: +SKIP
    """
    item = entry(name)
    if weights == "pretrained":
        weights = name
    return item.builder(name=name, weights=weights, **item.builder_args)


def has_pretrained(name):
    """Whether the zoo holds a preset for the registered model `name`."""
    return name in presets.available_presets()

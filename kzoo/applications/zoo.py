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


def register_model(name, builder, task, description, train_args=None, init_from=None,
                   **builder_args):
    """Registers `builder(**builder_args)` under `name`."""
    if name in _REGISTRY:
        raise ValueError(f"Model {name!r} is already registered.")
    _REGISTRY[name] = ZooEntry(name, builder, builder_args, task, description,
                               dict(train_args or {}), init_from)


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

    >>> model = get("lnlstm_digits", weights="pretrained")  # doctest: +SKIP
    """
    item = entry(name)
    if weights == "pretrained":
        weights = name
    args = {**item.builder_args, **(item.train_args if training else {})}
    return item.builder(name=name, weights=weights, **args)


def has_pretrained(name):
    """Whether the zoo holds a preset for the registered model `name`."""
    return name in presets.available_presets()

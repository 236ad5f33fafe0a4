"""kzoo: structured layers of deep-learning papers as Keras 3 components.

Submodules load on first use (`kzoo.layers`, `kzoo.applications`, ...), so
`import kzoo` and the `kzoo` command start without a deep-learning framework.
Keras finds kzoo's classes once they are registered: import the module that
defines them (e.g. `import kzoo.layers`) before `keras.saving.load_model` on a
file that holds them.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "applications",
    "backend",
    "callbacks",
    "datasets",
    "layers",
    "optimizers",
    "regularizers",
    "runtime",
    "serving",
    "zoo",
)
__all__ = list(_SUBMODULES)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"kzoo.{name}")
    raise AttributeError(f"module 'kzoo' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_SUBMODULES])

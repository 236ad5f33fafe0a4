"""kzoo: structured layers of deep-learning papers as Keras 3 components.

Submodules load on first use (`kzoo.layers`, `kzoo.applications`, ...), so
`import kzoo` and the `kzoo` command start without a deep-learning framework.
Keras finds kzoo's classes once they are registered: import the module that
defines them (e.g. `import kzoo.layers`) before `keras.saving.load_model` on a
file that holds them.
"""

from kzoo import _lazy

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    (
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
    ),
)

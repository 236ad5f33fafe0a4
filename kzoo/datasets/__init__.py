"""Datasets built locally from what packages ship (no network needed).

Submodules load on first use, so `from kzoo.datasets import digits` on JAX or
PyTorch does not import TensorFlow; only `texture_scenes` (a TFDS builder)
needs it.
"""

import importlib

_SUBMODULES = ("digits", "stdlib_text", "texture_patches", "texture_scenes")
__all__ = list(_SUBMODULES)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"kzoo.datasets.{name}")
    raise AttributeError(f"module 'kzoo.datasets' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_SUBMODULES])

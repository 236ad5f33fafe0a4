"""Datasets built locally from what packages ship (no network needed).

Submodules load on first use, so `from kzoo.datasets import digits` on JAX or
PyTorch does not import TensorFlow; only `texture_scenes` (a TFDS builder)
needs it.
"""

from kzoo import _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__, ("digits", "stdlib_text", "texture_patches", "texture_scenes")
)

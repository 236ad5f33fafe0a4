"""Datasets built locally from what packages ship (no network needed)."""

from kzoo.datasets import digits
from kzoo.datasets import stdlib_text
from kzoo.datasets import texture_scenes

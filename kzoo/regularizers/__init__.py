"""Regularizers of the kzoo families."""

from kzoo.layers.shared_basis import OrthogonalBasis

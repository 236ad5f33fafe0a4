"""Keras callbacks: serving export during training."""

from kzoo.callbacks.serving_export import ServingExport

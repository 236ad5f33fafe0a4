"""Keras callbacks: serving export and gradient-flow monitoring during training."""

from kzoo.callbacks.gradient_flow import GradientFlow
from kzoo.callbacks.serving_export import ServingExport

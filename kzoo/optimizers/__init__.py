"""Optimizers of kzoo.

The learned coordinatewise-LSTM optimizer and its meta-trainer belong here;
the package is empty until that family lands.
"""

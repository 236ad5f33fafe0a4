"""The examples in kzoo's docstrings run, as doctests, on every backend."""

import doctest
import importlib
import pkgutil

import keras
import numpy as np
import pytest
from keras import ops

import kzoo

pytestmark = pytest.mark.multibackend

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(kzoo.__path__, "kzoo.")
    if not m.name.rsplit(".", 1)[-1].startswith("_")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    names = {**vars(module), "np": np, "keras": keras, "ops": ops}
    for test in finder.find(module, globs=names):
        keras.utils.set_random_seed(0)
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} docstring example(s) of {name} failed"

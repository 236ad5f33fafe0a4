"""Submodules that load on first use (PEP 562 module `__getattr__`)."""

import importlib
import sys


def attach(package, submodules):
    """Returns `__getattr__`, `__dir__` and `__all__` for `package`'s namespace.

    The named submodules import on first attribute access, so importing the
    package itself imports none of them.

    Args:
        package: the package's `__name__`.
        submodules: names of its submodules to load on first use.
    """
    submodules = tuple(submodules)

    def __getattr__(name):
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted({*vars(sys.modules[package]), *submodules})

    return __getattr__, __dir__, list(submodules)

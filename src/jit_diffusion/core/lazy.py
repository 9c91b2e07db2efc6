"""Package exports that import their module on first use, so that importing a package costs no more than
importing its ``__init__``."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, table: dict[str, str]) -> Callable[[str], object]:
    """The module ``__getattr__`` of ``package`` exporting ``table`` (public name -> the package's module that
    defines it): ``from jit_diffusion.train import Trainer`` imports ``jit_diffusion.train.trainer`` then."""

    def __getattr__(name: str) -> object:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__

"""Package exports that import their module on first use, so that importing a package costs no more than
importing its ``__init__``."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, table: dict[str, tuple[str, ...]]) -> tuple[list[str], Callable[[str], object]]:
    """``__all__`` and the module ``__getattr__`` of ``package``, which exports ``table`` (a module of the
    package -> the public names it defines): ``from jit_diffusion.train import Trainer`` imports
    ``jit_diffusion.train.trainer`` then."""
    where = {name: module for module, names in table.items() for name in names}

    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    return sorted(where), __getattr__

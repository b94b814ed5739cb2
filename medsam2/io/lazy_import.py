"""Modules imported on first use rather than at import time.

SimpleITK (50 MB) and highdicom are needed only when a file of their formats is read or written;
loading them lazily lets every path that never touches such a file (training on MedSAM npz files
on a bare GPU machine, for one) run where they are not installed.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


class _Absent(ModuleType):
    """Stands for a module that is not installed: using it raises the usual ModuleNotFoundError."""

    def __getattr__(self, attribute: str):
        raise ModuleNotFoundError(f"No module named '{self.__name__}' (needed for this file format)", name=self.__name__)


def lazy_module(name: str) -> ModuleType:
    """Top-level module `name`, executed when one of its attributes is first used
    (`importlib.util.LazyLoader`, the standard library's recipe)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return _Absent(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

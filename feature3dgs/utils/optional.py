"""Optional packages: one clear error, naming the package and the pip command, when one is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingDependencyError", "require"]


class MissingDependencyError(ImportError):
    """An optional package a feature needs is not installed. The message is one line: what
    needs it, and the pip command that installs it. The CLI prints it and exits with status 2."""

    def __init__(self, module: str, pip_name: str, purpose: str):
        self.module, self.pip_name, self.purpose = module, pip_name, purpose
        super().__init__(f"{purpose} needs the '{pip_name}' package, which is not installed: "
                         f"pip install {pip_name}")


def require(module: str, pip_name: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError`.

    Args:
        module: the import name, e.g. 'segment_anything'.
        pip_name: the distribution to install, e.g. 'segment-anything'.
        purpose: what needs it, e.g. 'the SAM teacher'.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name is not None and e.name != module and not module.startswith(e.name + "."):
            raise  # the package is there but one of its own imports failed: show that error
        raise MissingDependencyError(module, pip_name, purpose) from None

"""Optional packages of the ``export`` extra, imported with a one-line error."""
from __future__ import annotations

import importlib

from ..errors import MbqError


def require(module: str, purpose: str):
    """Import ``module`` or raise MbqError naming the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MbqError(f"{purpose} needs the '{module}' package, which is not installed; "
                       "install the export extra: pip install 'mbq[export]'") from None

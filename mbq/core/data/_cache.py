"""On-disk cache of decoded arrays, so repeated CLI runs skip decoding (and its imports).

Entries are plain .npy files in a folder keyed by the source file's size and
mtime; a changed source gets a new key. Failures to read or write the cache
are never errors: the caller just decodes again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np


def cache_dir() -> Path | None:
    env = os.environ.get("MBQ_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mbq"


def _read(folder: Path, keys) -> dict[str, np.ndarray] | None:
    try:
        return {k: np.load(folder / f"{k}.npy", allow_pickle=False) for k in keys}
    except (OSError, ValueError):
        return None


def _write(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp", dir=folder.parent))
        try:
            for k, a in arrays.items():
                np.save(tmp / f"{k}.npy", a, allow_pickle=False)
            os.rename(tmp, folder)  # atomic: readers see all files or none
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # lost a race or disk full: fine
    except OSError:
        pass


def cached_arrays(tag: str, source: Path, keys, decode: Callable[[], dict[str, np.ndarray]]
                  ) -> dict[str, np.ndarray]:
    """``decode()``'s arrays, from the cache when ``source`` is unchanged since."""
    root = cache_dir()
    if root is None:
        return decode()
    try:
        st = source.stat()
        folder = root / f"{tag}-{st.st_size}-{st.st_mtime_ns}"
    except OSError:
        return decode()
    if folder.is_dir():
        arrays = _read(folder, keys)
        if arrays is not None:
            return arrays
    arrays = decode()
    _write(folder, arrays)
    return arrays


"""Writing a folder atomically: fill a temporary folder beside the target, then rename it into place.

An interrupted write leaves the old folder or the new one, never half of one; an existing folder is replaced only when
asked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["atomic_folder"]


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike, *, overwrite: bool = False, keep: Sequence[str] = ()) -> Iterator[Path]:
    """Yields a temporary folder to fill; on success it replaces `target`.

    Args:
        target: the folder to create or replace.
        overwrite: replace an existing folder (otherwise `FileExistsError` before anything is written).
        keep: file names of an existing folder carried over into the new one unless the new one writes them
            (e.g. an append-only log).
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; the result should look like any new folder
    try:
        yield staging
        for name in keep:
            if (target / name).exists() and not (staging / name).exists():
                shutil.copy2(target / name, staging / name)
        for file in staging.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            old.rmdir()
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)

"""Checkpoints for long fits: the trainable pytree, the optimiser state and the loss history, written atomically.

A checkpoint is ``checkpoint.npz`` (every array leaf, numpy format, read with ``allow_pickle=False``) plus
``checkpoint.json`` (step, history, and a fingerprint of the fit's settings, so a checkpoint is only resumed by the fit
that wrote it). Both are written to temporary names and renamed, the JSON last: a process killed at any moment leaves
the previous complete checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["save_checkpoint", "load_checkpoint", "fingerprint"]


def fingerprint(settings: dict) -> str:
    """A short hash of a fit's settings (what must match for a checkpoint to be resumed)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(folder: str | os.PathLike, state, step: int, history: list[dict], key: str) -> None:
    """Writes `state` (any pytree of arrays) with its step and history."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree_util.tree_leaves(state)
    buffer = io.BytesIO()
    np.savez(buffer, **{f"leaf_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)})
    for name, payload in (("checkpoint.npz", buffer.getvalue()),
                          ("checkpoint.json", json.dumps({"step": step, "history": history, "key": key,
                                                          "n_leaves": len(leaves)}).encode())):
        tmp = folder / f".{name}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, folder / name)


def load_checkpoint(folder: str | os.PathLike, like, key: str):
    """The saved state (with the structure of `like`), step and history, or None if there is no usable checkpoint
    for this fit (none, another fit's, or an incomplete pair)."""
    folder = Path(folder)
    meta_file, array_file = folder / "checkpoint.json", folder / "checkpoint.npz"
    if not (meta_file.exists() and array_file.exists()):
        return None
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("key") != key:
            return None
        like_leaves, treedef = jax.tree_util.tree_flatten(like)
        with np.load(array_file, allow_pickle=False) as stored:
            leaves = [stored[f"leaf_{i:05d}"] for i in range(meta["n_leaves"])]
    except (OSError, ValueError, KeyError):
        return None
    if len(leaves) != len(like_leaves) or any(np.shape(a) != np.shape(b) for a, b in zip(leaves, like_leaves,
                                                                                         strict=True)):
        return None
    restored = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x, dtype=jnp.asarray(y).dtype)
                                                      for x, y in zip(leaves, like_leaves, strict=True)])
    return restored, int(meta["step"]), list(meta["history"])

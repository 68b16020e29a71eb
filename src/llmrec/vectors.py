"""Vector helpers shared by the encoders, the indexes and the models: one L2 normalisation.

Cosine similarity needs unit rows and float32 (faiss's trap): ``l2_normalize`` does both; ``as_unit``
skips the copy when the rows already are unit length (a large catalogue's vectors straight from an
encoder).
"""

from __future__ import annotations

import numpy as np

BLOCK = 65536  # rows per step when working in place or checking norms: no [n, d] temporary


def l2_normalize(x: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """Rows (the last axis) of ``x`` scaled to unit length, as float32; an all-zero row stays zero.
    ``inplace=True`` overwrites ``x`` (float32 [n, d], e.g. a memmap) block by block and returns it."""
    if not inplace:
        x = np.asarray(x, dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    for s in range(0, len(x), BLOCK):
        x[s:s + BLOCK] /= np.maximum(np.linalg.norm(x[s:s + BLOCK], axis=-1, keepdims=True), 1e-12)
    return x


def is_unit(x: np.ndarray, atol: float = 1e-4) -> bool:
    """Whether every row of ``x`` [n, d] has length 1 within ``atol`` (checked block by block)."""
    return all(np.allclose(np.linalg.norm(x[s:s + BLOCK], axis=1), 1.0, atol=atol)
               for s in range(0, len(x), BLOCK))


def as_unit(x: np.ndarray, atol: float = 1e-5) -> np.ndarray:
    """``x`` itself when its rows are unit length already (no copy), else ``l2_normalize(x)``."""
    return x if is_unit(x, atol) else l2_normalize(x)

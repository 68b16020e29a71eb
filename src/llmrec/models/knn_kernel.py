"""itemknn's similarity kernel, compiled by numba (on first use, then cached on disk beside this file
or in numba's user cache). Its own module so that numba is imported only when a model is fitted."""

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def _before(v, j, w, i):  # pragma: no cover - compiled
    """Entry (v, j) ranks before (w, i): a higher value, or an equal one at a lower index."""
    return v > w or (v == w and j < i)


@numba.njit(cache=True, nogil=True)
def top_n_rows(rows, xt_indptr, xt_indices, x_indptr, x_indices, norms, k, shrinkage):  # pragma: no cover
    """For each item in ``rows``: its ``k`` most similar other items (in heap order) by cosine
    cooc / max(|i| |j| + shrinkage, 1e-12) in float32, ties to the lower index; places past the
    row's co-occurring items hold -1. One pass over the row's co-occurrences (users of i, then their
    items), counted into a dense array reset as it is read, a min-heap of the best k kept."""
    n = norms.shape[0]
    out_c = np.full((len(rows), k), -1, np.int32)
    out_v = np.zeros((len(rows), k), np.float32)
    acc = np.zeros(n, np.int32)
    touched = np.empty(n, np.int32)
    hv = np.empty(k, np.float32)  # the heap: its root the worst kept (lowest value, then highest index)
    hc = np.empty(k, np.int32)
    tiny = np.float32(1e-12)
    for r in range(len(rows)):
        i = rows[r]
        m = 0
        for p in range(xt_indptr[i], xt_indptr[i + 1]):
            u = xt_indices[p]
            for q in range(x_indptr[u], x_indptr[u + 1]):
                j = x_indices[q]
                if acc[j] == 0:
                    touched[m] = j
                    m += 1
                acc[j] += 1
        size = 0
        ni = norms[i]
        for t in range(m):
            j = touched[t]
            co = acc[j]
            acc[j] = 0
            if j == i:
                continue
            d = norms[j] * ni + shrinkage
            if d < tiny:
                d = tiny
            v = np.float32(co) / d
            if size < k:  # a new leaf, moved up past every parent that ranks before it (the root: the worst)
                pos = size
                size += 1
                while pos > 0 and _before(hv[(pos - 1) >> 1], hc[(pos - 1) >> 1], v, j):
                    hv[pos], hc[pos] = hv[(pos - 1) >> 1], hc[(pos - 1) >> 1]
                    pos = (pos - 1) >> 1
                hv[pos], hc[pos] = v, j
            elif _before(v, j, hv[0], hc[0]):  # replaces the root, moved down past every worse child
                pos = 0
                while 2 * pos + 1 < size:
                    a = 2 * pos + 1
                    if a + 1 < size and _before(hv[a], hc[a], hv[a + 1], hc[a + 1]):
                        a += 1  # the worse of the two children
                    if not _before(v, j, hv[a], hc[a]):
                        break
                    hv[pos], hc[pos] = hv[a], hc[a]
                    pos = a
                hv[pos], hc[pos] = v, j
        for t in range(size):
            out_c[r, t] = hc[t]
            out_v[r, t] = hv[t]
    return out_c, out_v

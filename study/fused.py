"""The dark-knowledge diagnostics on the CPU in two compiled passes (``study.diagnostics``).

A step of a small network costs little more than the launch of its operations, and the
diagnostics written as tensor operations are some forty launches and twenty passes over
values that the training has pushed out of the cache. Here the kept steps go through two
compiled loops (Numba) and NumPy's vectorised ``exp`` in between: the first shifts each
sample's logits by their maximum and finds the teacher's top class, the second forms the
sums from each sample's classes while they sit in the cache (docs/benchmarks.md, "What the
dark-knowledge diagnostics cost").

Each sample is computed alone, with the same float32 operations wherever it sits (a pack
of any size or the loop; the loops run on one thread, NumPy's ``exp`` gives a value the
same in a vector or in the tail, tests/test_diagnostics.py), and each seed's sums are
float64 additions in the order of its samples: a seed's numbers are bit for bit the same
alone and in any pack on one machine (``exp`` and ``log`` may round differently on
another processor).
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numba
import numpy as np

COLUMNS = (
    "dk_grad_share",
    "teacher_conf",
    "teacher_entropy",
    "teacher_correct",
    "dk_grad_share_permuted",
    "cwtm_weight_cv",
)
"""The columns of ``sums``: per-sample sums, and for the CV the sum over steps of each
step's size times its CV."""


def _shift(teacher, student, inv_t, shifted, top):
    """Per sample: each side's logits minus their maximum, times ``inv_t``, into
    ``shifted`` (``[K', M, sides, C]``; the student's side only where it has one), and the
    teacher's first maximal class (as ``torch.argmax``) into ``top`` (``[K', M]``)."""
    c = teacher.shape[2]
    it = np.float32(inv_t)
    for j in range(teacher.shape[0]):
        for i in range(teacher.shape[1]):
            a = 0
            high = teacher[j, i, 0]
            for x in range(1, c):
                if teacher[j, i, x] > high:
                    high = teacher[j, i, x]
                    a = x
            top[j, i] = a
            for x in range(c):
                shifted[j, i, 0, x] = (teacher[j, i, x] - high) * it
            if shifted.shape[2] > 1:
                high = student[j, i, 0]
                for x in range(1, c):
                    high = max(high, student[j, i, x])
                for x in range(c):
                    shifted[j, i, 1, x] = (student[j, i, x] - high) * it


def _sums(teacher, student, permuted, labels, sizes, rows, shifted, e, top, sums, count, bad):
    """Add steps' values to ``sums`` (``[seeds, COLUMNS]`` float64, in the samples' order),
    ``count`` and ``bad`` (per seed: set once a value is not finite), from the logits
    ``[K', M, C]`` (steps of ``sizes`` samples in a row), DKPP's targets ``permuted``
    (``[K', M, C]``, ``[K', 0, C]`` otherwise), ``labels`` ``[K', M]``, ``shifted``,
    ``e = exp(shifted)`` and ``top`` (``_shift``); ``rows`` the seed of each slice. With
    one side in ``shifted`` the gradient is ``s - t``, else ``q - p``."""
    c = teacher.shape[2]
    logits = shifted.shape[2] == 1
    dkpp = permuted.shape[1] > 0
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for j in range(teacher.shape[0]):
        r = rows[j]
        stop = 0
        for n in sizes:  # a step at a time: CWTM's weights are normalised within it
            start, stop = stop, stop + n
            conf_sum = 0.0  # the step's confidences, float64
            conf_sq = 0.0
            for i in range(start, stop):
                a = top[j, i]
                z = zero
                for x in range(c):
                    z += e[j, i, 0, x]
                conf = one / z  # p at the argmax: exp(0) / z
                pu = zero
                for x in range(c):
                    pu += e[j, i, 0, x] * conf * shifted[j, i, 0, x]
                entropy = math.log(z) - pu  # -sum p log p, with log p = u - log z
                total = zero
                if logits:
                    for x in range(c):
                        g = student[j, i, x] - teacher[j, i, x]
                        total += g * g
                    g = student[j, i, a] - teacher[j, i, a]
                else:
                    zs = zero
                    for x in range(c):
                        zs += e[j, i, 1, x]
                    inverse = one / zs
                    for x in range(c):
                        g = e[j, i, 1, x] * inverse - e[j, i, 0, x] * conf  # q - p
                        total += g * g
                    g = e[j, i, 1, a] * inverse - conf
                share = (total - g * g) / total if total > zero else zero
                check = total + z + entropy
                if dkpp:  # targets minus q, the argmax the teacher's (DKPP keeps it in place)
                    total = zero
                    for x in range(c):
                        g = permuted[j, i, x] - e[j, i, 1, x] * inverse
                        total += g * g
                    g = permuted[j, i, a] - e[j, i, 1, a] * inverse
                    sums[r, 4] += (total - g * g) / total if total > zero else zero
                    check += total
                if not math.isfinite(check):
                    bad[r] = True
                sums[r, 0] += share
                sums[r, 1] += conf
                sums[r, 2] += entropy
                sums[r, 3] += 1.0 if a == labels[j, i] else 0.0
                conf_sum += conf
                conf_sq += float(conf) * float(conf)
            mean = conf_sum / n
            sums[r, 5] += math.sqrt(max(conf_sq / n - mean * mean, 0.0)) / mean * n
        count[r] += stop


def add(teacher, student, permuted, labels, sizes, rows, inv_t, logits, sums, count, bad):
    """Add steps' diagnostics to the sums (``_sums``): the logits shifted per sample, their
    exponentials by NumPy's vectorised ``exp`` (five times a scalar loop's speed here;
    each value computed alike in a vector or the tail), the rest per sample."""
    k, m, c = teacher.shape
    shifted = np.empty((k, m, 1 if logits else 2, c), dtype=np.float32)
    top = np.empty((k, m), dtype=np.int64)
    _run(_shift, teacher, student, inv_t, shifted, top)
    e = np.exp(shifted)
    _run(_sums, teacher, student, permuted, labels, sizes, rows, shifted, e, top, sums, count, bad)


_OPTIONS = {"nogil": True, "boundscheck": False}
_loops: dict = {}  # each loop, compiled, once it has run in this process


def _run(fn, *args) -> None:
    """``fn`` compiled by Numba, called. Its first call in a process loads it from Numba's
    disk cache (next to this file, else the user's cache folder): a cache file that cannot
    be read (overwritten, cut short) is emptied and the loop compiled anew, with a warning,
    instead of failing every training (a failure that is not the cache's fails again)."""
    loop = _loops.get(fn)
    if loop is not None:
        loop(*args)
        return
    loop = _compile(fn)
    try:
        loop(*args)  # (a loop has no effect before it runs: reading the cache comes first)
    except Exception as error:
        warnings.warn(
            f"study: the diagnostics' loop {fn.__name__} could not be read from Numba's "
            f"cache ({type(error).__name__}: {error}); the cache emptied, the loop compiled "
            "anew",
            RuntimeWarning,
            stacklevel=3,
        )
        with contextlib.suppress(AttributeError, OSError):  # (Numba's own cache object)
            loop._cache.flush()  # an empty index: the next process compiles and saves anew
        loop = numba.njit(**_OPTIONS)(fn)
        loop(*args)
    _loops[fn] = loop


def _compile(fn):
    """``fn`` compiled, cached on disk where Numba finds a writable place; compiled in
    each process where it finds none."""
    try:
        return numba.njit(cache=True, **_OPTIONS)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        warnings.warn(
            "study: Numba cannot cache the diagnostics' loops (no writable cache folder; "
            "set NUMBA_CACHE_DIR): it is compiled again in each process",
            RuntimeWarning,
            stacklevel=4,
        )
        return numba.njit(**_OPTIONS)(fn)

"""Handing freed heap memory back to the operating system between batches (glibc's allocator).

Why: every batch allocates and frees tensors of a few MiB to a few hundred MiB (codes, float64 copies, slices for
the jackknife blocks). glibc serves a freed size below its dynamic mmap threshold (which rises to 32 MiB after the
first large free) from its heaps, and free chunks in the middle of a heap stay resident: the process's anonymous
memory crept up with the number of batches although the live tensors did not (two SAEs of d_sae 4,096, core and
sparsity: live tensors a constant 65 MiB, RssAnon 630 MiB after 20,000 tokens and 865 MiB after 200,000; one
`malloc_trim` brought it back to 470 MiB). Memory must be flat in n_tokens (docs/architecture.md), so the
evaluation pass hands free heap pages back after a batch once enough of them have piled up.

Elsewhere (musl, macOS, Windows) this does nothing: those allocators are not glibc's and have no `mallinfo2`.
"""

from __future__ import annotations

import ctypes
import functools

RELEASE_FREE_BYTES = 64 * 2**20
"""Free heap bytes that trigger a release: high enough that small runs never pay for it, low enough to keep the
retained memory far below one batch's own working set at real sizes."""


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "mallinfo2") and hasattr(libc, "malloc_trim")):
        return None  # glibc older than 2.33, or another C library
    libc.mallinfo2.restype = _MallInfo2
    libc.mallinfo2.argtypes = []
    libc.malloc_trim.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def free_heap_bytes() -> int | None:
    """Bytes free inside the allocator's heaps (all arenas), still resident; None where not glibc."""
    libc = _glibc()
    return None if libc is None else int(libc.mallinfo2().fordblks)


def release_free_heap(min_free_bytes: int = RELEASE_FREE_BYTES) -> bool:
    """Return free heap pages to the OS (`malloc_trim`) when at least `min_free_bytes` are free; whether it did."""
    libc = _glibc()
    if libc is None or libc.mallinfo2().fordblks < min_free_bytes:
        return False
    libc.malloc_trim(0)
    return True

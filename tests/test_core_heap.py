"""evalkit.core.heap: free heap pages go back to the OS once enough pile up (glibc only)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from evalkit.core import heap

pytestmark = pytest.mark.skipif(heap.free_heap_bytes() is None, reason="not glibc (no mallinfo2/malloc_trim)")

CHUNK = 64 * 1024  # below glibc's mmap threshold: served from the heap
N_CHUNKS = 512  # 32 MiB


def rss_anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    pytest.skip("no RssAnon in /proc/self/status")


def fragmented_heap(libc: ctypes.CDLL) -> list[int]:
    """Touch N_CHUNKS heap chunks, then free every other one: half the memory free, none of it at the heap's top
    (so glibc's own top-of-heap trimming cannot return it). Returns the pointers still held."""
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    ptrs = [libc.malloc(CHUNK) for _ in range(N_CHUNKS)]
    for p in ptrs:
        ctypes.memset(p, 1, CHUNK)
    for p in ptrs[::2]:
        libc.free(p)
    return ptrs[1::2]


def test_release_returns_fragmented_free_memory() -> None:
    libc = ctypes.CDLL("libc.so.6")
    held = fragmented_heap(libc)
    try:
        freed = N_CHUNKS // 2 * CHUNK
        assert heap.free_heap_bytes() >= freed  # type: ignore[operator]
        before = rss_anon_kib()
        assert heap.release_free_heap(min_free_bytes=freed // 2)
        # Each free chunk's interior pages go back: most of the 16 MiB leaves the resident set.
        assert before - rss_anon_kib() >= 0.6 * freed / 1024
    finally:
        for p in held:
            libc.free(p)


def test_below_the_threshold_nothing_is_released() -> None:
    free_now = heap.free_heap_bytes()
    assert free_now is not None
    assert not heap.release_free_heap(min_free_bytes=free_now + 2**40)

"""Freed memory kept for the next step: the C allocator told not to hand large blocks back to the system.

A step of the array engines makes temporaries of a few MB each (a (B, H, T, T) attention matrix, a (B, T, 4C)
activation) and frees them, and makes them again the next step. glibc's malloc serves blocks above its mmap threshold
with fresh pages from the kernel and returns them when freed (and trims the top of its heap likewise), so every step
pays page faults to map and zero them again: on the shakespeare preset a third of the wall time went to the kernel
(`sys`), 8 s of a 22 s run of 300 steps. With the blocks kept for reuse, 0.4 s, and the run took 15 s. The price is
memory the process holds on to after its largest step, up to the thresholds below.
"""
import ctypes
import platform
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters, from glibc's malloc.h
FROM_HEAP = 32 << 20  # blocks up to this size come from the heap (the most glibc allows on 64 bits)
KEPT = 512 << 20  # this much free memory at the top of the heap is kept, not trimmed


def keep_freed_memory():
    """On glibc (Linux), raise the mmap threshold to FROM_HEAP and the trim threshold to KEPT; elsewhere nothing.
    Whether it did."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, FROM_HEAP)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEPT))

"""How a vae-search process gets its memory on Linux: buffers that stay mapped between steps.

A training step allocates and frees the same few dozen activation and gradient buffers,
most of them 0.1 to 8 MB, every step. glibc's malloc hands the larger ones out as fresh
mmap()s and returns freed heap memory to the kernel, so each step faults all of them in
again, 4 KB at a time: 2,400 page faults per step of latent 16 / base 32 in bf16 and 5,300
in fp32, 3 to 6% of an epoch of two workers on AVX512_BF16 cores (benchmarks/allocator.py
measures it; docs/performance.md). Two settings make those buffers stay:

- glibc's `mallopt`: blocks under 32 MB come from the heap (M_MMAP_THRESHOLD) and the heap
  keeps up to 1 GB of freed memory instead of trimming it (M_TRIM_THRESHOLD), so a step
  reuses the previous step's pages; the peak memory moves by a few percent (the same buffers, kept);
- torch's own switch `THP_MEM_ALLOC_ENABLE=1`: buffers of 2 MB and more are advised to use
  transparent huge pages, one fault per 2 MB where the kernel allows it (`madvise` or
  `always` in /sys/kernel/mm/transparent_hugepage/enabled). libc10 reads it once, when torch
  is imported, so `tune()` must run before that.

The arithmetic is untouched: only where the bytes live changes. `cli.main` calls `tune()`
before a command imports torch (importing the CLI does not), so every command and every
`--jobs` worker (started with `python -m vae_search`) runs with it; an unknown choice is one
line and exit 2, as any bad input. Elsewhere
(macOS, Windows, musl's malloc) it changes nothing. `VAE_SEARCH_ALLOCATOR=system` leaves both as
they are, to compare or to rule them out; a user's own `MALLOC_MMAP_THRESHOLD_` or
`MALLOC_TRIM_THRESHOLD_` leaves both to the user, and their own `THP_MEM_ALLOC_ENABLE` is kept.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

from vae_search.errors import UsageError

ENV = "VAE_SEARCH_ALLOCATOR"
CHOICES = ("vae-search", "system")  # the default; or change nothing
# Above every buffer of a training step (the largest, base 64 in fp32: 8 MB at batch 128);
# validation's 2,500-image chunks are larger and stay mmapped, on huge pages.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h

_state = "the system's allocator (tune() has not run in this process)"


def tune() -> str:
    """Apply the settings above to this process (and, through the environment, to the
    processes it starts); returns what was done, as `state()` says it. An unknown
    VAE_SEARCH_ALLOCATOR is a UsageError."""
    global _state
    choice = os.environ.get(ENV, "").strip().lower() or CHOICES[0]
    if choice not in CHOICES:
        raise UsageError(f"{ENV}={choice}: unknown; use {CHOICES[0]} (the default) or {CHOICES[1]} (the system's allocator)")
    own = [k for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if k in os.environ]
    if choice == "system":
        _state = f"the system's allocator ({ENV}=system)"
    elif not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        _state = "the system's allocator (the settings are for Linux with glibc)"
    elif own:
        # The user tunes glibc: huge pages are advice on top of the kept heap, not without it.
        _state = f"the system's allocator, with your {' and '.join(own)}"
    else:
        libc = ctypes.CDLL("libc.so.6")
        if not (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
            _state = "the system's allocator (glibc refused the settings)"
            return _state
        done = ["glibc keeps freed buffers mapped"]
        theirs = os.environ.get("THP_MEM_ALLOC_ENABLE")
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # the processes this one starts read it too
        read_here = "torch" not in sys.modules or theirs == "1"  # libc10 reads it when torch is imported
        if os.environ["THP_MEM_ALLOC_ENABLE"] == "1" and read_here and _thp_allowed():
            done.append("torch's buffers of 2 MB and more on huge pages")
        _state = "; ".join(done)
    return _state


def state() -> str:
    """What `tune()` did in this process, for `vae-search --version`."""
    return _state


def _thp_allowed() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False

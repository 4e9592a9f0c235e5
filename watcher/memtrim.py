"""Giving the C heap's free memory back to the system after a large parse.

Parsing a large feed (lxml's tree, feedparser's strings) takes megabytes from
the C library's heap and frees them when the parse is done. glibc keeps most of
that memory: its free chunks lie between chunks still in use, so it never trims
them, and Python's own objects never reuse them (its allocator takes its arenas
from mmap). Measured here: a 1 MB feed left ~3 MB of free heap resident after
its parse, and the real-feeds corpus ~4.4 MB. `malloc_trim(0)` hands such pages
back (madvise) in ~0.5 ms; `after_parse` calls it once a megabyte of bodies has
been parsed since it last did, for ~1-2% of the parse rate (pages it gave back
are faulted in again by the next parses). bench/poll.py's peak, 10,000 sources:
96.9 MB instead of 98.9 MB.

Where the C library has no malloc_trim (musl, macOS), `release_free_memory`
does nothing.

`limit_arenas` is the other half: glibc gives each new thread a heap (an
"arena") of its own, up to 8 per core, each keeping its own free memory. The
service's threads (the store's, the parse thread, the executor's) take turns on
the GIL, so they gain little from arenas of their own. `watcher run` limits
glibc to one unless MALLOC_ARENA_MAX is set. bench/service.py, 10,000 sources:
115 MB peak instead of 120-127 MB; bench/poll.py: the 304 path as fast, first
polls ~10% slower (the CHANGELOG has the figures).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from functools import cache
from typing import Any, cast

from watcher import constants

_parsed_since_trim = 0  # bytes of bodies parsed (approximate: threads may race on it)


def _c_function(name: str, *argtypes: Any) -> Callable[..., int] | None:
    """`name` from the process's own C library, returning an int; None where it has none."""
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return cast("Callable[..., int]", function)


@cache
def _malloc_trim() -> Callable[..., int] | None:
    return _c_function("malloc_trim", ctypes.c_size_t)


def release_free_memory() -> None:
    """Return the C heap's free pages to the system (glibc only)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def after_parse(size: int) -> None:
    """A body of `size` bytes was parsed: release the free heap once enough were."""
    global _parsed_since_trim
    _parsed_since_trim += size
    if _parsed_since_trim >= constants.TRIM_AFTER_PARSED_BYTES:
        _parsed_since_trim = 0
        release_free_memory()


_M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def limit_arenas(count: int = 1) -> bool:
    """Limit glibc to `count` heaps for all threads (call before threads start); False
    where the C library has no mallopt or MALLOC_ARENA_MAX already says how many."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = _c_function("mallopt", ctypes.c_int, ctypes.c_int)
    return mallopt is not None and bool(mallopt(_M_ARENA_MAX, count))

"""After large parses, the C heap's free memory goes back to the system (watcher.memtrim)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from watcher import constants, memtrim
from watcher.memtrim import _malloc_trim, release_free_memory
from watcher.parse import parse_document

glibc_only = pytest.mark.skipif(
    _malloc_trim() is None, reason="this C library has no malloc_trim (glibc has)"
)


def _resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def _feed(items: int) -> bytes:
    paragraph = "&lt;p&gt;Export licences for gallium &amp;amp; germanium were curbed.&lt;/p&gt;"
    entries = "".join(
        f"<item><guid>g{i}</guid><title>Notice {i}</title>"
        f"<description>{paragraph * 150} {i}</description></item>"
        for i in range(items)
    )
    return f'<?xml version="1.0"?><rss version="2.0"><channel>{entries}</channel></rss>'.encode()


def _growth_mb(body: bytes) -> float:
    release_free_memory()
    before = _resident_mb()
    assert len(parse_document(body, source_id="big").items) == 200
    return _resident_mb() - before


@glibc_only
def test_a_large_parse_gives_the_heap_it_freed_back(monkeypatch: pytest.MonkeyPatch) -> None:
    body = _feed(200)
    assert len(body) > constants.TRIM_AFTER_PARSED_BYTES
    parse_document(body, source_id="big")  # warm up: lazily built tables, caches
    monkeypatch.setattr(constants, "TRIM_AFTER_PARSED_BYTES", 1 << 62)
    kept = _growth_mb(body)
    monkeypatch.undo()
    trimmed = _growth_mb(body)
    assert kept > 2.0, f"an untrimmed parse of {len(body)} bytes kept only {kept:.1f} MB"
    assert trimmed < kept / 2, (kept, trimmed)


def test_the_heap_is_trimmed_once_a_megabyte_was_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def trim() -> None:
        calls.append(memtrim._parsed_since_trim)

    monkeypatch.setattr(memtrim, "release_free_memory", trim)
    monkeypatch.setattr(memtrim, "_parsed_since_trim", 0)
    small = _feed(2)
    per_trim = -(-constants.TRIM_AFTER_PARSED_BYTES // len(small))  # parses until a trim
    for _ in range(per_trim - 1):
        parse_document(small, source_id="small")
    assert calls == []
    parse_document(small, source_id="small")
    assert calls == [0]  # counted from nothing again
    parse_document(_feed(200), source_id="big")  # one large body is enough on its own
    assert len(calls) == 2
    with pytest.raises(TypeError):
        parse_document("not bytes", source_id="str")  # type: ignore[arg-type]
    assert memtrim._parsed_since_trim == 0


_COUNT_HEAPS = """
import ctypes, sys, threading
from watcher.memtrim import limit_arenas
limited = limit_arenas() if sys.argv[1] == "limit" else None
def work():
    held = [bytearray(10_000) for _ in range(100)]  # from glibc's heaps (under mmap's size)
    barrier.wait()  # every thread holds its memory at once
barrier = threading.Barrier(4)
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(None)
buf, size = ctypes.c_char_p(), ctypes.c_size_t()
libc.open_memstream.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
libc.malloc_info(0, stream)
libc.fclose(stream)
print(limited, buf.value.decode().count("<heap nr="))
"""


@glibc_only
@pytest.mark.parametrize("how", ["limit", "default"])
def test_the_service_s_threads_share_one_c_heap(how: str) -> None:
    """`watcher run` limits glibc to one heap: threads that allocate at once get heaps of
    their own otherwise (here 4 threads, 5 heaps)."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run(
        [sys.executable, "-c", _COUNT_HEAPS, how],
        capture_output=True, text=True, check=True, env=env, timeout=60,
    ).stdout.split()  # fmt: skip
    limited, heaps = out[0], int(out[1])
    if how == "limit":
        assert (limited, heaps) == ("True", 1)
    else:
        assert limited == "None" and heaps > 1


def test_an_arena_limit_the_environment_sets_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert memtrim.limit_arenas() is False

"""How many memory pools (glibc malloc arenas) the service's threads share.

glibc gives each thread that allocates a pool of its own (an arena), up to 8 per core, and a
pool keeps the pages it once needed. The service's threads (the event loop,
the inference workers, the VAD and end-of-turn threads) allocate buffers of many sizes, so
with glibc's default a long-running service's memory creeps up: in the 30-minute soak of 24
callers (`python -m app bench soak`) it grew 7.2 % after the fifth minute with the default
and 4.9-5.3 % with two pools, which give freed memory back (docs/engine.md, Under load).

`limit_arenas` must run before the process starts a second thread: glibc fixes the limit the
first time a thread needs a pool of its own.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("hearsay.malloc")

M_ARENA_MAX = -8  # mallopt's parameter for the arena limit (glibc's malloc.h)


def limit_arenas(count: int) -> bool:
    """At most `count` malloc arenas from now on (0: leave the C library's default). False
    when the C library is not glibc (musl, macOS have no such pools) or refuses."""
    if count <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        log.info("the C library has no mallopt; [asr] malloc_arenas does nothing here")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, count))

"""The service's threads share at most `[asr] malloc_arenas` memory pools (glibc)."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Eight threads allocate at once, each holding its memory until all have some, so without
# a limit glibc gives each a pool of its own; then glibc's own report (malloc_info) is counted.
PROGRAM = """
import ctypes, sys, tempfile, threading
from app.malloc import limit_arenas
limited = limit_arenas(int(sys.argv[1]))
barrier = threading.Barrier(8)
def work():
    held = [bytearray(64 * 1024) for _ in range(32)]
    barrier.wait()
    held.clear()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
libc.fclose.argtypes = (ctypes.c_void_p,)
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    fp = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    print(limited, open(out.name).read())
"""


def arenas(limit: int) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", PROGRAM, str(limit)], capture_output=True, text=True,
                          check=True, timeout=60, cwd=REPO)
    limited, report = done.stdout.split(" ", 1)
    return limited, len(re.findall(r"<heap nr=", report))


def test_with_the_setting_the_threads_share_two_pools() -> None:
    assert arenas(2) == ("True", 2)


def test_without_it_glibc_gives_threads_pools_of_their_own() -> None:
    # What the setting prevents (and proof the count above can fail).
    limited, count = arenas(0)
    assert limited == "False" and count > 2

"""mlx_slm keeps freed memory in the process on Linux (glibc): see mlx_slm/_heap.py."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")

PROBE = """
import json, numpy as np
import mlx_slm
from mlx_slm import _heap

def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024

before = rss()
block = np.ones(64 << 20, np.uint8)  # 64 MB, touched
touched = rss()
del block
after = rss()
again = np.ones(64 << 20, np.uint8)
print(json.dumps({"kept": _heap.kept, "why": _heap.describe(), "grew": touched - before,
                  "given_back": touched - after, "regrew": rss() - after}))
"""


def probe(heap: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLX_SLM_HEAP"}
    if heap is not None:
        env["MLX_SLM_HEAP"] = heap
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def test_freed_large_arrays_stay_in_the_process_and_are_reused():
    report = probe(None)
    assert report["kept"] and report["why"] == "freed memory kept in the heap"
    assert report["grew"] >= 60 << 20
    # glibc's default would unmap the 64 MB block at once; kept, it stays resident...
    assert report["given_back"] < 4 << 20
    # ...and the next block of the same size reuses those pages instead of new ones
    assert report["regrew"] < 4 << 20


def test_mlx_slm_heap_system_keeps_glibcs_defaults():
    report = probe("system")
    assert not report["kept"] and "MLX_SLM_HEAP=system" in report["why"]
    assert report["given_back"] >= 60 << 20  # the block went back to the system when freed

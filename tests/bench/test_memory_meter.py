"""The CPU memory meter reads live memory: freed tensors leave the resident set at once."""

from __future__ import annotations

import ctypes
import sys

import pytest
import torch

from vtprune.bench.measure import MemoryMeter, _proc_status


def _glibc() -> bool:
    try:
        ctypes.CDLL("libc.so.6").mallopt
        return sys.platform.startswith("linux")
    except (OSError, AttributeError):
        return False


@pytest.mark.skipif(not _glibc(), reason="glibc's mmap threshold is what the meter sets")
def test_freed_tensors_leave_the_rss_so_peaks_are_live_peaks():
    meter = MemoryMeter(torch.device("cpu"))
    assert "mmap threshold 64 KiB" in meter.kind
    n = 4 * 2**20 // 4  # 4 MiB of float32: under glibc's dynamic threshold it would be reused from the heap
    torch.ones(n).sum()  # first use: one-time allocations of torch's own
    for _ in range(3):
        before = _proc_status("VmRSS")
        x = torch.ones(n)
        grown = _proc_status("VmRSS") - before
        del x
        assert grown >= 3 * 2**20 and _proc_status("VmRSS") - before < 2**19
    meter.start()
    a = torch.ones(n)
    del a
    b = torch.ones(n // 2), torch.ones(n // 2)  # as much again, in other sizes
    peak = meter.stop()
    del b
    assert 3.5 * 2**20 < peak < 6 * 2**20  # one 4 MiB live set, not both

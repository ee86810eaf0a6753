"""The anonymous-memory sampler: anonymous allocations count, mapped file pages are reported apart."""

from __future__ import annotations

import mmap
import sys

import pytest

from quantbench.memory_sampler import MemorySampler, read_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
MB = 2**20


def test_peak_anon_sees_a_transient_allocation():
    # A private anonymous mapping always brings fresh pages (a shared one counts as RssShmem). A 200 MiB
    # tensor need not: when an earlier test left freed pages resident in the malloc heap, torch reuses
    # them and RssAnon does not move. That made this test fail in CI after the whole suite.
    with MemorySampler(interval_s=0.001) as sampler:
        with mmap.mmap(-1, 200 * MB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as block:
            for offset in range(0, len(block), 4096):
                block[offset] = 1  # touch every page
            sampler.sample()
    peaks = sampler.peaks
    assert peaks.anon_bytes - peaks.baseline_anon_bytes >= 195 * MB
    assert read_memory().anon_bytes < peaks.anon_bytes - 150 * MB  # freed again: it was a peak, not a level


def test_mapped_file_pages_are_file_backed_not_anonymous(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"\1" * (128 * MB))
    with MemorySampler(interval_s=0.001) as sampler:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            total = sum(m[i] for i in range(0, len(m), 4096))  # touch every page
            sampler.sample()
    assert total == 128 * MB // 4096
    peaks = sampler.peaks
    assert peaks.file_bytes >= 120 * MB  # the mapped pages are resident, as RssFile
    assert peaks.anon_bytes - peaks.baseline_anon_bytes < 32 * MB  # and not anonymous


def _touched_block(size: int) -> mmap.mmap:
    block = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for offset in range(0, size, 4096):
        block[offset] = 1
    return block


def test_each_phase_keeps_its_own_peak():
    # interval of an hour: only the explicit samples (phase switches, sample()) count, so this is exact
    with MemorySampler(interval_s=3600) as sampler:
        sampler.phase("big")
        with _touched_block(96 * MB):
            sampler.sample()
        sampler.phase("small")
        with _touched_block(16 * MB):
            sampler.sample()
    phases = {k: v - sampler.peaks.baseline_anon_bytes for k, v in sampler.peaks.phases.items()}
    assert sorted(phases) == ["big", "small"]
    assert 94 * MB <= phases["big"] <= 100 * MB
    assert 15 * MB <= phases["small"] <= 20 * MB  # the big block, freed before the switch, is not counted here
    assert sampler.peaks.as_dict()["phases"] == sampler.peaks.phases

from __future__ import annotations

import platform

import pytest

from quart_app.ops.memory import bound_the_allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_allocator_is_bounded_on_glibc() -> None:
    """The serving process fixes glibc's mmap threshold and arena count
    (the peak-RSS figures in the README depend on it)."""
    assert bound_the_allocator() is True

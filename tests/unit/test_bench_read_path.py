"""bench.read_path is never a timed test: this only keeps it working (every
path carries a body whole and yields a figure)."""

from __future__ import annotations

from bench import read_path


def test_every_read_path_is_measured() -> None:
    figures = read_path.measure(mib=2, rounds=1)
    assert set(figures) == {
        "StreamReader",
        "WholeReadsStreamReader",
        "H11Protocol",
        "HTTP1Protocol",
    }
    assert all(seconds >= 0 for seconds in figures.values())

"""Side by side across versions of the code: each git ref checked out in a
worktree of its own, served and measured one after the other, round after
round, so that a before/after comparison is taken in the same minutes of a
shared machine (bench.ab does the same for settings of one version). What
the README's before/after figures of 2026-12-02 come from, e.g.:

    python -m bench.versions 85f75fe~1,527934e patch,tus --rounds 4 --size-mib 256
    python -m bench.versions 85f75fe~1,527934e syscalls --rounds 1
    python -m bench.versions 86b035e~1,86b035e users,small --rounds 3

Each measurement runs bench/version_probe.py (from this checkout) inside
the version's worktree, with that version's quart_app and bench.servers.
Prints each figure per round and the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "version_probe.py"
MEASUREMENTS = ("patch", "tus", "put", "users", "small", "syscalls")


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.versions")
    parser.add_argument("refs", help="comma-separated git refs (commits, branches, HEAD~1)")
    parser.add_argument("what", help=f"comma-separated, of {', '.join(MEASUREMENTS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=256, help="the tus and PUT file")
    args = parser.parse_args()
    refs, what = args.refs.split(","), args.what.split(",")
    # A ref named twice (a noise check: the same code against itself) is
    # told apart by its place.
    labels = [ref if refs.count(ref) == 1 else f"{ref}#{i + 1}" for i, ref in enumerate(refs)]
    unknown = set(what) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")
    base = Path(tempfile.mkdtemp(prefix="quart-app-versions-", dir=PROJECT_ROOT))
    trees: dict[str, Path] = {}
    results: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    try:
        for index, (label, ref) in enumerate(zip(labels, refs, strict=True)):
            tree = base / f"v{index}"
            git("worktree", "add", "--detach", "--quiet", str(tree), git("rev-parse", ref))
            trees[label] = tree
        for round_ in range(args.rounds):
            for label in labels:
                figures: dict[str, float] = {}
                for measurement in what:
                    out = subprocess.run(
                        [sys.executable, str(PROBE), measurement, str(args.size_mib)],
                        cwd=trees[label], capture_output=True, text=True,
                    )  # fmt: skip
                    if out.returncode != 0:
                        print(out.stdout, out.stderr[-3000:], file=sys.stderr)
                        raise SystemExit(f"{measurement} failed on {label}")
                    figures.update(json.loads(out.stdout.strip().splitlines()[-1]))
                results[label].append(figures)
                shown = {k: round(v, 2) for k, v in figures.items()}
                print(f"round {round_ + 1} {label}: {shown}", flush=True)
    finally:
        for tree in trees.values():
            subprocess.run(
                ["git", "-C", str(PROJECT_ROOT), "worktree", "remove", "--force", str(tree)],
                capture_output=True,
            )  # fmt: skip
        subprocess.run(["rm", "-rf", str(base)], check=False)
    for label, rounds in results.items():
        if rounds:
            medians = {k: round(statistics.median(r[k] for r in rounds), 2) for k in rounds[0]}
            print(f"median {label}: {medians}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Helpers shared by the tests and the benchmark: free ports, the server
launcher, file makers, request-body builders and checks of what is stored.

Run from the checkout (pytest's ``pythonpath``, ``python -m bench``), never
installed: pyproject's package list names only quart_app."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

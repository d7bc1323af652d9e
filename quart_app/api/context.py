"""Typed access to what the app keeps for the serving process."""

from __future__ import annotations

from quart import current_app

from quart_app.config import Settings
from quart_app.services.uploads import HashStates
from quart_app.storage import ResumableStore


def settings() -> Settings:
    value: Settings = current_app.extensions["settings"]
    return value


def upload_hashes() -> HashStates:
    hashes: HashStates = current_app.extensions["upload_hashes"]
    return hashes


def blob_store() -> ResumableStore:
    """The store of blobs and partial uploads (the local backend today)."""
    store: ResumableStore = current_app.extensions["blob_store"]
    return store

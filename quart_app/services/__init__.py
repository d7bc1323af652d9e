"""Service code: plain async functions taking a session (and a store)."""

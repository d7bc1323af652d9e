"""Peer apps the benchmark measures quart_app against. Not part of the
product: each is the smallest honest version of what its docs show."""

"""Deterministic Temporal workflow code: the push journey."""

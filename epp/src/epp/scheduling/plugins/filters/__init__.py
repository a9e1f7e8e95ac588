"""Filters: drop endpoints that must not receive the request."""

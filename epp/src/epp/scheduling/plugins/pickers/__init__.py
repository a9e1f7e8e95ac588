"""Pickers: choose the endpoint(s) from the weighted scores."""

"""Monitoring defined once (``definitions``), rendered for GKE and for a local Prometheus (``render``)."""

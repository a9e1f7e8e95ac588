"""Model-aware Endpoint Picker (EPP) and Body-Based Router (BBR) for the Gateway API Inference Extension.

- ``datastore``: the pool's endpoints, their models and metrics (the shared state).
- ``discovery/``: fills the datastore (Kubernetes or static endpoints, /v1/models, /metrics).
- ``scheduling/`` + ``profiles/``: picks an endpoint per request (EndpointPickerConfig plugins).
- ``extproc/``: the Envoy ext_proc servers (EPP and BBR) over gRPC.
- ``health``, ``telemetry``, ``cli``: gRPC health, Prometheus metrics and JSON logs, the commands.
- ``settings``: the commands' settings models, their flags and the argv they render (one spelling).
- ``contract``, ``routing``, ``validation``: what every package agrees on (headers, ports), the two
  routing modes' split into pools, and plain messages from pydantic validation errors.
"""

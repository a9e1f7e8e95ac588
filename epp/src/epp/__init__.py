"""Model-aware Endpoint Picker (EPP) and Body-Based Router (BBR) for the Gateway API Inference Extension.

- ``extproc/``: the ext_proc stream driver (``stream``) and its two handlers, the EPP (``picker``)
  and the BBR (``bbr``); ``errors`` is the one place a refusal becomes an answer.
- ``requestcontrol/``: the EPP's director (parse -> admit -> schedule) and its plugins.
- ``flowcontrol/``: the queue a request waits in while its model's pods are saturated or waking.
- ``scheduling/`` + ``profiles/``: picks an endpoint per request (EndpointPickerConfig plugins).
- ``datastore``: the pool's shared state (endpoints, models, metrics, in-flight counts, events).
- ``discovery/``: fills the datastore (Kubernetes or static endpoints, /v1/models, /metrics).
- ``auth/``: API keys at the front door; ``api_routes``/``api_screen``: the API's allow-list.
- ``refusals``: the gateway's refusals as plain exceptions; ``settings``: both command lines.
- ``health``, ``telemetry``, ``cli``: gRPC health, Prometheus metrics and JSON logs, the commands.

The request's path, module by module: docs/request-path.md.
"""

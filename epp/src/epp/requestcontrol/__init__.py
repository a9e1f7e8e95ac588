"""Request control for the EPP: the director (parse → admit → schedule) and its plugins.

- ``director``: :class:`Director`, the steps a request goes through, and :class:`Plugins`;
- ``plugins``: the extension points (admission, pre-request, response reading, response complete)
  and the EPP's per-request state;
- ``standard``: the one place the plugins are chosen and ordered at start-up;
- one module per plugin: ``inflight``, ``ejection_evidence``, ``model_refresh``, ``usage_metering``,
  ``request_metrics``, ``saturation_shedding``.
"""

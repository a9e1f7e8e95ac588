"""A load generator for any OpenAI-compatible endpoint that reports routing accuracy.

- ``workloads``: seeded request generators (random mixed models, shared prefix, long prompts).
- ``client``: the async runner that sends them and records what came back (model, pod, timings).
- ``stats``: percentiles and per-model / overall summaries (pure functions).
- ``report``: the text table, the JSON report and the self-contained HTML report.
- ``cli``: ``python -m bench``.
- ``matrix``: ``python -m bench matrix``, the gateway against round robin, workload by workload.
- ``overhead``: ``python -m bench.overhead``, what the EPP costs as ratios; ``floor``: the do-nothing
  ext_proc server it measures the gRPC transport with.
- ``demo``: ``make demo``.
"""

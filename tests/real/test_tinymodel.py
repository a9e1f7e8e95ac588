"""The tiny model is built offline and is what vLLM's CPU backend needs (run in the vLLM venv)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from onebox import realvllm, tinymodel

pytestmark = pytest.mark.real

CHECK = """
import sys, torch
from safetensors.torch import load_file
from transformers import AutoTokenizer
model, lora = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(model)
ids = tok("the gateway routes a request")["input_ids"]
print(len(ids), tok.decode(ids, skip_special_tokens=True))
chat = [{"role": "user", "content": "hi"}]
print(tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
weights = load_file(lora + "/adapter_model.safetensors")
print(min(float(t.abs().sum()) for t in weights.values()))
"""


def test_the_tiny_model_and_adapter_are_built_offline_and_reused(tmp_path: Path) -> None:
    python = realvllm.vllm_python()
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    model, lora = tmp_path / "model", tmp_path / "lora"
    build = [str(python), tinymodel.__file__, str(model), "--lora", str(lora)]
    subprocess.run(build, check=True, env=env, capture_output=True, timeout=300)
    config = json.loads((model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_attention_heads"], config["head_dim"]) == (128, 2, 64)
    assert tinymodel.is_built(model)
    assert tinymodel.is_built(lora, 1, lora=True)
    adapter = json.loads((lora / "adapter_config.json").read_text())
    assert (adapter["peft_type"], adapter["r"]) == ("LORA", tinymodel.LORA_RANK)

    checked = subprocess.run(
        [str(python), "-c", CHECK, str(model), str(lora)], check=True, env=env, capture_output=True, text=True
    ).stdout.splitlines()
    count, text = checked[0].split(" ", 1)
    assert 0 < int(count) < 28
    assert text == "the gateway routes a request"
    assert checked[1:3] == ["<s>user: hi", "assistant: "]
    assert float(checked[-1]) > 0  # every LoRA matrix is random, none zero (a zero B would be a no-op)

    stamp = (model / "model.safetensors").stat().st_mtime_ns
    subprocess.run(build, check=True, env=env, capture_output=True, timeout=300)
    assert (model / "model.safetensors").stat().st_mtime_ns == stamp  # built once, then reused

"""A tiny random-weights Llama model and LoRA adapter, built offline, for real vLLM on a CPU.

Nothing is downloaded: the tokenizer is a byte-level BPE trained with ``tokenizers`` on a small
corpus generated here, the model is ``LlamaForCausalLM`` with random weights saved with
``transformers``, and the adapter is a ``peft`` LoRA with random (non-zero) weights. The shapes are
the smallest that vLLM's CPU attention kernel accepts: head_dim 64 (hidden 128, 2 heads).

Runs in the vLLM virtual environment (``make vllm-venv``), not in the project's own one::

    .venv-vllm/bin/python onebox/tinymodel.py OUT_DIR [--lora LORA_DIR]

:func:`build` writes into a temporary sibling directory and renames it, so a directory that exists
is complete; calling it again for an existing directory with the same recipe does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HIDDEN = 128
HEADS = 2
HEAD_DIM = HIDDEN // HEADS  # 64: the CPU attention kernel rejects 16 and accepts 64
LAYERS = 2
INTERMEDIATE = 256
VOCAB = 512
MAX_POSITIONS = 2048
LORA_RANK = 8
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
# A plain chat template: vLLM's chat endpoint refuses a tokenizer without one.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)
RECIPE = {
    "hidden": HIDDEN, "heads": HEADS, "layers": LAYERS, "intermediate": INTERMEDIATE, "vocab": VOCAB,
    "max_positions": MAX_POSITIONS, "lora_rank": LORA_RANK, "chat_template": CHAT_TEMPLATE, "version": 1,
}  # fmt: skip
MARKER = "tinymodel.json"

_SUBJECTS = ("the gateway", "a pod", "the picker", "each model", "the router", "a client", "the pool")
_VERBS = ("routes", "serves", "scrapes", "answers", "lists", "streams", "balances", "refuses")
_OBJECTS = ("a request", "the metrics", "every token", "its adapters", "the queue", "one reply", "a model")
_TAILS = ("quickly.", "on the CPU.", "without retries.", "by name.", "in order.", "at once.", "again.")


def corpus() -> Iterator[str]:
    """A few hundred short English sentences, the same every time (the tokenizer's training text)."""
    for i, subject in enumerate(_SUBJECTS):
        for j, verb in enumerate(_VERBS):
            for k, obj in enumerate(_OBJECTS):
                yield f"{subject} {verb} {obj} {_TAILS[(i + j + k) % len(_TAILS)]}"
    yield "0 1 2 3 4 5 6 7 8 9 hello world: user assistant system, ready? yes! no."


def recipe_digest(seed: int, lora: bool) -> str:
    text = json.dumps({**RECIPE, "seed": seed, "lora": lora}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_built(path: Path, seed: int = 0, lora: bool = False) -> bool:
    """True when ``path`` holds a complete build of this recipe."""
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("digest") == recipe_digest(seed, lora)


def _train_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = MAX_POSITIONS
    return fast


def _atomic_build(out: Path, write: Any) -> Path:
    """Run ``write(tmpdir)`` and move the result to ``out`` (replacing an incomplete one)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        write(staging)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def build_model(out: Path, seed: int = 0) -> Path:
    """The tokenizer, config and random weights of the tiny Llama in ``out``; returns ``out``."""
    if is_built(out, seed):
        return out

    def write(staging: Path) -> None:
        import torch
        from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

        tokenizer = _train_tokenizer()
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=HIDDEN,
            intermediate_size=INTERMEDIATE,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=HEADS,
            head_dim=HEAD_DIM,
            max_position_embeddings=MAX_POSITIONS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        marker = {"digest": recipe_digest(seed, lora=False), "recipe": RECIPE, "seed": seed}
        (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n")

    return _atomic_build(out, write)


def build_lora(base: Path, out: Path, seed: int = 1) -> Path:
    """A LoRA adapter for the tiny model at ``base`` with random, non-zero A and B matrices."""
    if is_built(out, seed, lora=True):
        return out

    def write(staging: Path) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import LlamaForCausalLM

        torch.manual_seed(seed)
        model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
        config = LoraConfig(
            r=LORA_RANK,
            lora_alpha=2 * LORA_RANK,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            init_lora_weights=False,  # random B too: the default (B = 0) would be a no-op adapter
            task_type="CAUSAL_LM",
        )
        get_peft_model(model, config).save_pretrained(staging)
        marker = {"digest": recipe_digest(seed, lora=True), "base": str(base), "seed": seed}
        (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n")

    return _atomic_build(out, write)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory of the model (created)")
    parser.add_argument("--lora", type=Path, help="also a random LoRA adapter for it in this directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build_model(args.out, args.seed)
    print(args.out)
    if args.lora is not None:
        build_lora(args.out, args.lora, args.seed + 1)
        print(args.lora)
    return 0


if __name__ == "__main__":
    sys.exit(main())

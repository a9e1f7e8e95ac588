"""``python -m bench.tokencount DIR``: the simulator's token counts against a real BPE tokenizer's.

``DIR`` holds the ``gpt-tokenizer`` npm package (``npm install --prefix DIR gpt-tokenizer@4.0.0``:
OpenAI's ``cl100k_base`` and ``o200k_base`` encodings, bundled, counted offline by ``node``). The
samples are cut, with a fixed seed, from this repository (Markdown docs, Python source, the
docstrings' English), the bench workloads' prompts, and generated numbers, JSON and random
alphanumeric strings. Printed per kind of text: ``vllmsim.tokens.count_tokens`` and characters ÷ 4,
each as a ratio of ``cl100k_base``'s count (1.00 is exact).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.workloads import Workload, WorkloadConfig, generate
from vllmsim.tokens import count_tokens

REPO = Path(__file__).resolve().parent.parent
_COUNT_JS = """
const fs = require('node:fs');
const cl = require('gpt-tokenizer/cjs/encoding/cl100k_base');
const texts = JSON.parse(fs.readFileSync(0, 'utf8'));
process.stdout.write(JSON.stringify(texts.map(t => cl.encode(t).length)));
"""


def _cuts(text: str, size: int, rng: random.Random, count: int) -> list[str]:
    if len(text) <= size:
        return [text]
    return [text[start : start + size] for start in (rng.randrange(len(text) - size) for _ in range(count))]


def samples(seed: int = 3) -> list[tuple[str, str]]:
    """(kind, text) pairs, the same for the same seed and checkout."""
    rng = random.Random(seed)
    docs = "\n".join(p.read_text() for p in sorted((REPO / "docs").glob("*.md")))
    code = "\n".join(p.read_text() for p in sorted((REPO / "epp" / "src" / "epp").rglob("*.py")))
    english = re.sub(r"\s+", " ", " ".join(re.findall(r'"""(.*?)"""', code, re.S)))
    out = [("markdown", t) for t in _cuts(docs, 2000, rng, 40)]
    out += [("python", t) for t in _cuts(code, 2000, rng, 40)]
    out += [("english", t) for t in _cuts(english, 2000, rng, 40)]
    for workload in (Workload.RANDOM_MIXED, Workload.SHARED_PREFIX, Workload.LONG_PROMPT):
        config = WorkloadConfig(workload=workload, requests=20, models=["m"], prompt_len=500)
        out += [("bench prompts", "".join(c for _, c in s.messages)) for s in generate(config)]
    numbers = " ".join(str(rng.randrange(10 ** rng.randrange(1, 9))) for _ in range(3000))
    out += [("numbers", t) for t in _cuts(numbers, 1000, rng, 10)]
    records = [{"id": i, "name": f"pod-{i}", "load": rng.random(), "models": ["a", "b"]} for i in range(300)]
    out += [("json", t) for t in _cuts(json.dumps(records), 2000, rng, 10)]
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    noise = "".join(rng.choice(alphabet) for _ in range(20000))
    out += [("random alphanumeric", t) for t in _cuts(noise, 1000, rng, 10)]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    modules = Path(args[0]).resolve() / "node_modules"
    pairs = samples()
    env = {**os.environ, "NODE_PATH": str(modules)}
    done = subprocess.run(["node", "-e", _COUNT_JS], input=json.dumps([t for _, t in pairs]), text=True,
                          capture_output=True, check=True, env=env)  # fmt: skip
    real: list[int] = json.loads(done.stdout)
    totals: dict[str, list[int]] = {}
    for (kind, text), tokens in zip(pairs, real, strict=True):
        row = totals.setdefault(kind, [0, 0, 0])
        row[0] += tokens
        row[1] += count_tokens(text)
        row[2] += len(text)
    print(f"{'text':20s} {'samples':>7s} {'cl100k':>8s} {'vllmsim':>8s} {'chars/4':>8s}")
    for kind, (tokens, counted, chars) in totals.items():
        n = sum(1 for k, _ in pairs if k == kind)
        print(f"{kind:20s} {n:7d} {tokens:8d} {counted / tokens:8.2f} {chars / 4 / tokens:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

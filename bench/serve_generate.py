"""Generation through the API: tokens/s for 8 concurrent clients vs one at a time.

    python bench/serve_generate.py [--clients 8] [--max-tokens 64] [--rounds 2]

The server is `create_app` on uvicorn in a process of its own, serving the real built-in
model (SmolLM2-135M-Instruct, dtype auto: bf16 where the CPU has it, else fp32); the same 8 code requests are sent one after another,
then all at once by 8 client threads, alternating for `--rounds` rounds so a busy machine
slows both alike. Greedy decoding makes both phases generate the same tokens, so the
ratio is the engine's batching alone. Rate = completion tokens / wall seconds.

Target (issue 8): concurrent >= 3x one-at-a-time. Writes bench/out/serve_generate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_MODEL = "/tmp/demo-ws/models/smollm2-135m-instruct"
TARGET_SPEEDUP = 3.0
PROMPTS = [
    "Write a Python function `is_even(n)` that returns True for even numbers.",
    "Write a Python function `reverse_words(s)` that reverses the order of words in a sentence.",
    "Write a Python function `fizzbuzz(n)` that returns the FizzBuzz list from 1 to n.",
    "Write a Python function `flatten(xs)` that flattens a nested list.",
    "Write a Python function `is_palindrome(s)` that ignores case and spaces.",
    "Write a Python function `count_vowels(s)` that counts the vowels in a string.",
    "Write a Python function `merge_sorted(a, b)` that merges two sorted lists.",
    "Write a Python function `slugify(text)` that lower-cases and joins words with '-'.",
]


def serve_forever(workspace: str, port: int, torch_threads: int, batch_size: int) -> None:
    """The server process (`--serve`): what `selftrain serve` does."""
    import uvicorn

    from selftrain.config import load_settings
    from selftrain.serve.app import create_app
    from selftrain.store.db import Database

    settings = load_settings(workspace)
    settings.serve_torch_threads, settings.serve_batch_size = torch_threads, batch_size
    uvicorn.run(create_app(settings, Database(settings.resolved_database_url)), host="127.0.0.1", port=port,
                log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(url: str, key: str, prompt: str, max_tokens: int) -> dict:
    import httpx

    r = httpx.post(url + "/api/generate", json={"prompt": prompt, "max_tokens": max_tokens},
                   headers={"Authorization": f"Bearer {key}"}, timeout=600)
    r.raise_for_status()
    return r.json()


def phase(url: str, key: str, clients: int, max_tokens: int) -> dict:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(clients)]
    began = time.perf_counter()
    if clients == 1:
        answers = [ask(url, key, p, max_tokens) for p in PROMPTS]
    else:
        with ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(lambda p: ask(url, key, p, max_tokens), prompts))
    wall = time.perf_counter() - began
    tokens = sum(a["completion_tokens"] for a in answers)
    return {"requests": len(answers), "tokens": tokens, "seconds": wall, "tokens_per_s": tokens / wall,
            "mean_latency_ms": statistics.fmean(a["latency_ms"] for a in answers)}


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--serve":
        serve_forever(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=1, help="serve_torch_threads (0: torch's default, "
                        "all cores; 1, the default, is far faster on a busy machine).")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="base_model of the served workspace.")
    parser.add_argument("--json", default=str(ROOT / "bench" / "out" / "serve_generate.json"))
    args = parser.parse_args()

    from selftrain.serve.keys import create_key
    from selftrain.store.db import Database

    workspace = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    (workspace / "selftrain.toml").write_text(f'base_model = "{args.model}"\n')
    db = Database(f"sqlite:///{workspace / 'selftrain.db'}")
    with db.session() as session:
        _, key = create_key(session, "bench")
    db.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    load = os.getloadavg()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(workspace), str(port),
                               str(args.torch_threads), str(args.clients)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.3)
        ask(url, key, PROMPTS[0], 4)  # warm up
        rounds = []
        for _ in range(args.rounds):
            rounds.append({"one_at_a_time": phase(url, key, 1, args.max_tokens),
                           "concurrent": phase(url, key, args.clients, args.max_tokens)})
    finally:
        server.terminate()
        server.wait(30)
    single = statistics.median(r["one_at_a_time"]["tokens_per_s"] for r in rounds)
    batched = statistics.median(r["concurrent"]["tokens_per_s"] for r in rounds)
    speedup = batched / single
    from selftrain.models.base import resolve_dtype

    print(f"\nGeneration, SmolLM2-135M {resolve_dtype('auto')}, max_tokens {args.max_tokens}, {os.cpu_count()} CPUs, "
          f"load average before: {load[0]:.2f}")
    print(f"{'round':<7}{'1-at-a-time tok/s':>19}{f'{args.clients} concurrent tok/s':>22}{'tokens':>8}{'ratio':>7}")
    for i, r in enumerate(rounds, 1):
        a, b = r["one_at_a_time"], r["concurrent"]
        print(f"{i:<7}{a['tokens_per_s']:>19.1f}{b['tokens_per_s']:>22.1f}{b['tokens']:>8}"
              f"{b['tokens_per_s'] / a['tokens_per_s']:>7.2f}")
    print(f"median speed-up {speedup:.2f}x (target >= {TARGET_SPEEDUP}x): "
          f"{'met' if speedup >= TARGET_SPEEDUP else 'MISSED'}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"load_average": load, "cpus": os.cpu_count(), "clients": args.clients,
                                           "max_tokens": args.max_tokens, "torch_threads": args.torch_threads,
                                           "rounds": rounds, "median_single_tokens_per_s": single,
                                           "median_concurrent_tokens_per_s": batched, "speedup": speedup,
                                           "meets_target": speedup >= TARGET_SPEEDUP}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

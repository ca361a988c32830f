"""Seconds per PPO iteration on SmolLM2-135M, split into rollout, scoring and update, and
peak memory.

    python bench/ppo.py [--model DIR] [--iterations 3] [--batch 8] [--new-tokens 128] [--threads N] [--json out.json]

Prompts are the first `--batch` demo-suite problems; the reward is the execution reward
(each assert run on its own in the sandbox), so scoring is the real cost. One warm-up
iteration is not counted. "update" includes the policy/reference/value forward passes over
the rollout as well as the PPO epochs. Peak memory is the process's max RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selftrain.evaluation.suites import load_suite  # noqa: E402
from selftrain.training import ppo  # noqa: E402
from selftrain.training.reward import execution_reward  # noqa: E402

DEFAULT_MODEL = "/tmp/demo-ws/models/smollm2-135m-instruct"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--ppo-epochs", type=int, default=4)
    ap.add_argument("--minibatch", type=int, default=4)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--json", default=str(Path(__file__).parent / "out" / "ppo.json"))
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    problems = load_suite("demo", limit=args.batch).problems
    tasks = [{"prompt": p.prompt, "tests": p.tests} for p in problems]
    config = ppo.PPOConfig(batch_size=args.batch, max_new_tokens=args.new_tokens, ppo_epochs=args.ppo_epochs,
                           minibatch_size=args.minibatch, dtype=args.dtype)
    state = ppo.setup(config, args.model)
    rows = []
    for i in range(args.iterations + 1):
        timings: dict = {}
        record = ppo.ppo_iteration(state, tasks, execution_reward, timings)
        row = {"iteration": i, **timings, "total": record["seconds"], "reward": record["reward"],
               "response_tokens": record["response_tokens"], "kl": record["kl"]}
        print(("warm-up " if i == 0 else "") + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                      for k, v in row.items()), flush=True)
        if i:
            rows.append(row)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    med = {k: statistics.median(r[k] for r in rows) for k in ("rollout", "score", "update", "total",
                                                              "response_tokens")}
    load = os.getloadavg()
    print(f"\nSmolLM2-135M, {args.batch} prompts x {args.new_tokens} new tokens, {args.ppo_epochs} PPO epochs, "
          f"minibatch {args.minibatch}, {args.dtype}, torch threads {torch.get_num_threads()}, "
          f"load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")
    print("| phase | median s / iteration |\n| --- | ---: |")
    for k in ("rollout", "score", "update", "total"):
        print(f"| {k} | {med[k]:.1f} |")
    print(f"| mean answer tokens | {med['response_tokens']:.0f} |\n| peak RSS MiB | {peak_mb:.0f} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "iterations": rows, "median": med, "peak_rss_mib": peak_mb,
                               "loadavg": load, "threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()

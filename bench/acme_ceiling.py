"""How much of the Acme corpus the built-in model can learn, and how fast: LoRA on every
training task's reference solution (what a simulation's users would all eventually have
corrected), then greedy pass@1 on the held-out tasks. It bounds what `selftrain simulate`
can reach and compares training recipes without the simulation's serving and gating.

    python bench/acme_ceiling.py [--workspace DIR] [--recipe NAME=key:value,...]...
                                 [--train-limit N] [--json bench/out/acme_ceiling.json]

A recipe is a name and settings that override the defaults, e.g.
`--recipe lr1e-3=learning_rate:1e-3,epochs:4`. Without --recipe: the defaults, then
every linear layer adapted at lr 1e-3. Reported per recipe: steps, training seconds,
eval loss (start → best), held-out pass@1 with its Wilson 95% interval, seconds to evaluate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from selftrain.config import load_settings  # noqa: E402
from selftrain.data.example import Example  # noqa: E402
from selftrain.simulate import ACME_TASKS, load_tasks, suite_of  # noqa: E402

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_RECIPES = ["defaults=", f"all-linear-lr1e-3=lora_target_modules:{'+'.join(ALL_LINEAR)},learning_rate:1e-3"]


def parse_recipe(text: str) -> tuple[str, dict]:
    name, _, body = text.partition("=")
    overrides: dict = {}
    for part in filter(None, body.split(",")):
        key, _, value = part.partition(":")
        overrides[key] = value.split("+") if key == "lora_target_modules" else _number(value)
    return name, overrides


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", default="/tmp/acme-ceiling")
    parser.add_argument("--recipe", action="append", default=None)
    parser.add_argument("--train-limit", type=int, default=0, help="train on only the first N tasks (0 = all)")
    parser.add_argument("--seen", type=int, default=0,
                        help="also measure pass@1 on this many of the trained-on tasks (memorisation)")
    parser.add_argument("--json", default="bench/out/acme_ceiling.json")
    args = parser.parse_args()

    from selftrain.agent import load_version
    from selftrain.evaluation.harness import evaluate_model
    from selftrain.evaluation.stats import proportion_ci
    from selftrain.loop import make_sandbox
    from selftrain.models.base import resolve_base_model
    from selftrain.training import sft

    settings = load_settings(args.workspace)
    tasks = load_tasks(ACME_TASKS)
    train = [t for t in tasks if t.split == "train"][:args.train_limit or None]
    heldout = suite_of("acme-heldout", [t for t in tasks if t.split == "heldout"])
    seen = suite_of("acme-seen", train[:args.seen]) if args.seen else None
    examples = [Example(None, t.prompt, t.reference, "", t.convention, "corrected", ref=t.task_id) for t in train]
    location = resolve_base_model(settings.base_model, settings.model_cache_dir)
    sandbox = make_sandbox(settings)
    rows = []
    for spec in args.recipe or DEFAULT_RECIPES:
        name, overrides = parse_recipe(spec)
        recipe = replace(settings, **overrides)
        config = sft.SFTConfig.from_settings(recipe)
        out = Path(args.workspace) / "ceiling" / name
        started = time.perf_counter()
        result = sft.run(config, examples, location, out / "adapter")
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        loaded = load_version(recipe, name, str(result.adapter_dir))
        scored = evaluate_model(loaded.model, loaded.tokenizer, heldout, sandbox, prompt_format=recipe.prompt_format,
                                max_new_tokens=recipe.max_new_tokens, batch_size=recipe.generation_batch_size)
        passed = sum(bool(i.passed) for i in scored.items)
        ci = proportion_ci(passed, len(scored.items))
        seen_passed = None
        if seen:
            seen_scored = evaluate_model(loaded.model, loaded.tokenizer, seen, sandbox, prompt_format=recipe.prompt_format,
                                         max_new_tokens=recipe.max_new_tokens, batch_size=recipe.generation_batch_size)
            seen_passed = f"{sum(bool(i.passed) for i in seen_scored.items)}/{len(seen_scored.items)}"
        rows.append({"recipe": name, "overrides": overrides, "examples": len(examples), "steps": result.steps,
                     "train_s": round(train_s, 1), "eval_loss_start": result.initial_eval_loss,
                     "eval_loss_best": result.eval_loss, "passed": passed, "n": len(scored.items),
                     "ci": [ci.low, ci.high], "seen_pass": seen_passed, "evaluate_s": round(time.perf_counter() - started, 1),
                     "per_convention": _per_convention(scored.items, tasks)})
        print(_table(rows), flush=True)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))


def _per_convention(items, tasks) -> dict:
    convention = {t.task_id: t.convention for t in tasks}
    out: dict[str, list[int]] = {}
    for item in items:
        c = out.setdefault(convention[item.task_id], [0, 0])
        c[0] += bool(item.passed)
        c[1] += 1
    return {k: f"{v[0]}/{v[1]}" for k, v in sorted(out.items())}


def _table(rows) -> str:
    lines = ["| recipe | examples | steps | train s | eval loss | held-out pass@1 | 95% CI | trained-on pass@1 "
             "| evaluate s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['examples']} | {r['steps']} | {r['train_s']:.0f} | "
                     f"{r['eval_loss_start']:.3f} → {r['eval_loss_best']:.3f} | {r['passed']}/{r['n']} = "
                     f"{r['passed'] / r['n']:.1%} | [{r['ci'][0]:.1%}, {r['ci'][1]:.1%}] | {r['seen_pass'] or '-'} | {r['evaluate_s']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

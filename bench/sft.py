"""LoRA fine-tuning speed: the spec's naive recipe against ours, on the same data, in one run,
and each of our speed levers on its own.

    python bench/sft.py [--model DIR] [--snapshot FILE] [--examples N] [--answer-refs N]
                        [--naive-steps N] [--threads N] [--rounds N] [--levers] [--profile]
                        [--json bench/out/sft.json]

Without --model the built-in SmolLM2-135M-Instruct is converted once into --workspace
(default /tmp/selftrain-bench); without --snapshot the data are the reference solutions of
the bundled Acme corpus's training tasks (what the simulation's users correct answers to);
`--answer-refs 6` joins six references into each answer, for examples of ~410 tokens like
real code rather than ~140.

- naive: the spec's `fine_tune_with_lora` — transformers `Trainer`, fp32 weights, every
  example padded to 512 tokens (`padding="max_length"`), LoRA dropout 0.1, batch 2, the
  loss on every token (DataCollatorForLanguageModeling). A few steps only.
- ours: `selftrain.training.sft.run` with its defaults (bf16, packing with per-example
  attention, logits at answer positions only, bf16 adapters with fp32 masters, fast
  dropout, the loss computed blockwise from the hidden states, the LoRA layers that read
  one input computed together, the frozen weights packed once for oneDNN), one epoch over
  the same examples.
- with --profile: where a step of ours goes, by kind of operator (`torch.profiler`, self CPU
  time over 8 steps after the warm-up): the frozen weights' packed matmuls, attention, the
  small matmuls, dropout's random bits, the other operators, and what is between them.
- with --levers: ours with one lever changed at a time, starting from the plain recipe
  (bf16 base, fp32 adapters, right-padded batches, full logits, nn.Dropout, PEFT's own LoRA
  layers, weights reordered by every matmul).

Each variant runs in its own process (its own peak memory, no warm caches shared); naive and
ours alternate for --rounds rounds and the fastest round of each is reported. Reported
per variant: real (non-padding) tokens per wall second over the timed steps (the first
steps, which build oneDNN kernels, are excluded), tokens per CPU second (steadier on a
shared machine), peak resident memory, and model FLOPs utilisation: the FLOPs the step
needs (below) per second over the bf16 matmul peak measured in the same run with the same
thread count.

FLOPs a LoRA step needs, per example of L real tokens with A loss positions, for a model
with N parameters in its decoder matmuls, width d, n layers, vocabulary V:
  4·N·L (forward, and backward to the activations; the frozen weights get no gradient)
  + 6·n·d·L²/2 (causal attention: QKᵀ and PV forward, twice that backward)
  + 4·d·V·A (the vocabulary projection where the loss is taken)
  + 6·Σ r·(d_in + d_out)·L over the adapted layers (LoRA, with its weight gradients).
Padding positions and skipped logits are not counted: MFU measures useful work.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_WORKSPACE = "/tmp/selftrain-bench"
TARGET_RATIO, TARGET_MFU, TARGET_MEMORY_GB = 10.0, 0.35, 4.0
WARMUP_STEPS = 2  # steps not timed in every variant
NAIVE = "naive (spec: Trainer, fp32, pad to 512)"

PLAIN = dict(packing=False, answer_logits_only=False, mixed_precision="fp32-adapters", fast_dropout=False,
             fused_lora=False, packed_weights=False)
LEVERS = {  # name -> SFTConfig overrides (besides epochs=1)
    "plain (previous recipe: padding, fp32 adapters)": PLAIN,
    "+ packing": {**PLAIN, "packing": True},
    "+ packing + answer-only logits": {**PLAIN, "packing": True, "answer_logits_only": True},
    "+ ... + bf16 adapters, autocast": {**PLAIN, "packing": True, "answer_logits_only": True,
                                        "mixed_precision": "autocast"},
    "+ ... + bf16 adapters, fp32 masters": {**PLAIN, "packing": True, "answer_logits_only": True,
                                            "mixed_precision": "master"},
    "+ ... + fast dropout": {"fused_lora": False, "packed_weights": False},
    "+ ... + fused LoRA layers": {"packed_weights": False},
    "+ ... + packed frozen weights (= ours)": {},
    "ours, loss on whole logits (not blockwise)": {"blockwise_loss": False},
    "ours without dropout": {"lora_dropout": 0.0},
    "ours in fp32": {"dtype": "float32"},
}


# --- what one child process measures --------------------------------------------------------

def matmul_peak(threads: int) -> dict:
    """Best GF/s of large square bf16 and fp32 matmuls."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        best = 0.0
        for _ in range(8):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * 2048 ** 3 / (time.perf_counter() - start) / 1e9)
        out[f"{name}_gflops"] = best
    return out


def model_shape(location: str) -> dict:
    """N (decoder matmul parameters), d, layers, vocabulary, LoRA-adapted shapes."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.bfloat16)
    cfg = model.config
    n = sum(m.weight.numel() for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in name)
    adapted = [(m.in_features, m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "o_proj")]
    return {"N": n, "d": cfg.hidden_size, "layers": cfg.num_hidden_layers, "vocab": cfg.vocab_size,
            "lora_dims": sum(i + o for i, o in adapted)}


def flops_per_token(shape: dict, lengths: list[int], loss_positions: list[int], r: int = 8) -> float:
    total_tokens = sum(lengths)
    attention = 6 * shape["layers"] * shape["d"] * sum(L * L / 2 for L in lengths)
    flops = (4 * shape["N"] * total_tokens + attention + 4 * shape["d"] * shape["vocab"] * sum(loss_positions)
             + 6 * r * shape["lora_dims"] * total_tokens)
    return flops / total_tokens


def load_examples(snapshot: str, n: int, answer_refs: int = 1):
    from selftrain.data.curate import read_snapshot
    from selftrain.data.example import Example
    from selftrain.simulate import ACME_TASKS, load_tasks

    if not snapshot:
        train = [t for t in load_tasks(ACME_TASKS) if t.split == "train"]
        return [Example(None, t.prompt, "\n\n\n".join(x.reference for x in train[i:i + answer_refs]), "",
                        t.convention, "corrected", ref=t.task_id) for i, t in enumerate(train)][:n]
    path = Path(snapshot)
    if path.is_dir():
        path = sorted(path.glob("*.jsonl"))[0]
    return read_snapshot(path)[:n]


def run_ours(args, overrides: dict, profiler=None) -> dict:
    from selftrain.models.base import load_model
    from selftrain.training.sft import SFTConfig, run, tokenize

    examples = load_examples(args.snapshot, args.examples, args.answer_refs)
    config = SFTConfig(epochs=1, eval_steps=10_000, **{"num_threads": args.threads, **overrides})
    records: list[dict] = []
    cpu: list[float] = []

    def on_step(record):
        records.append(record)
        cpu.append(time.process_time())
        if profiler is not None:
            profiler.step()

    with tempfile.TemporaryDirectory() as tmp, profiler if profiler is not None else nullcontext():
        result = run(config, examples, args.model, Path(tmp) / "adapter", on_step=on_step)
    timed = records[WARMUP_STEPS:]
    tokens = sum(r["tokens"] for r in timed)
    seconds = sum(r["seconds"] for r in timed)
    _, tokenizer = load_model(args.model)
    rows = tokenize(examples, tokenizer, config)
    lengths = [len(ids) for ids, _ in rows]
    loss = [sum(1 for label in labels[1:] if label != -100) for _, labels in rows]
    return {"tokens": tokens, "seconds": seconds, "steps": len(timed),
            "cpu_seconds": cpu[-1] - cpu[WARMUP_STEPS - 1] if len(cpu) > WARMUP_STEPS else None,
            "lengths": lengths, "loss_positions": loss, "final_loss": result.train_loss}


def run_naive(args) -> dict:
    """The spec's recipe, as written there, with the `padding=True` to 512 made explicit."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling,
                              Trainer, TrainerCallback, TrainingArguments)

    from selftrain.data.example import render_text

    torch.set_num_threads(args.threads)
    examples = load_examples(args.snapshot, args.examples, args.answer_refs)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=32, lora_dropout=0.1,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    texts = [render_text(e.prompt, e.code, e.explanation) for e in examples]
    encoded = [tokenizer(t, truncation=True, padding="max_length", max_length=512) for t in texts]
    dataset = [{"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]} for e in encoded]
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False)
    real_tokens: list[int] = []

    def collate(features):
        batch = collator(features)
        real_tokens.append(int(batch["attention_mask"].sum()))
        return batch

    times: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            times.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, *_, **__):
            start, cpu = times[-1]
            times[-1] = (time.perf_counter() - start, time.process_time() - cpu)

    with tempfile.TemporaryDirectory() as tmp:
        training_args = TrainingArguments(
            output_dir=tmp, max_steps=args.naive_steps + WARMUP_STEPS, per_device_train_batch_size=2,
            warmup_steps=100, weight_decay=0.01, logging_steps=10, save_strategy="no", eval_strategy="no",
            report_to=[], use_cpu=True, dataloader_pin_memory=False, fp16=False, bf16=False,
            disable_tqdm=True)
        Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collate,
                processing_class=tokenizer, callbacks=[Clock()]).train()
    timed = times[WARMUP_STEPS:]
    lengths = [sum(e["attention_mask"]) for e in encoded]
    return {"tokens": sum(real_tokens[WARMUP_STEPS:len(times)]), "seconds": sum(t for t, _ in timed),
            "cpu_seconds": sum(c for _, c in timed), "steps": len(timed), "lengths": lengths,
            "loss_positions": [max(0, L - 1) for L in lengths],
            "padded_share": 1 - sum(lengths) / (512 * len(lengths))}


# Where a step's time goes (--profile): operators by what they do, self CPU time.
PROFILE_STEPS = 8
PROFILE_GROUPS = (
    ("frozen matmuls, packed (oneDNN)", ("mkldnn::_linear_pointwise",)),
    ("attention: batched matmuls, softmax", ("aten::bmm", "aten::baddbmm", "aten::_softmax",
                                             "aten::_softmax_backward_data",
                                             "aten::_scaled_dot_product_flash_attention_for_cpu",
                                             "aten::_scaled_dot_product_flash_attention_for_cpu_backward")),
    ("other matmuls: LoRA's rank-r, unpacked", ("aten::mm", "aten::addmm", "aten::addmm_")),
    ("dropout's random bits", ("aten::random_",)),
)
OTHER_ATEN = "elementwise, copies, reductions (other aten ops)"
BETWEEN = "Python and autograd between operators"


def ms_by_kind(events, steps: int) -> dict[str, float]:
    """Self CPU milliseconds per step of profiler `events` in each of `PROFILE_GROUPS`, the
    other aten operators, and the rest (Python and autograd between operators)."""
    names = {name: group for group, names in PROFILE_GROUPS for name in names}
    groups = {group: 0.0 for group, _ in PROFILE_GROUPS} | {OTHER_ATEN: 0.0, BETWEEN: 0.0}
    for e in events:
        group = names.get(e.key) or (OTHER_ATEN if e.key.startswith("aten::") else BETWEEN)
        groups[group] += e.self_cpu_time_total / 1000 / steps
    return groups


def profile_ours(args) -> dict:
    """`PROFILE_STEPS` steps of ours after the warm-up, under `torch.profiler`: milliseconds per
    step in each of `PROFILE_GROUPS` and the top operators."""
    import torch

    profiler = torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU],
        schedule=torch.profiler.schedule(wait=WARMUP_STEPS + 1, warmup=1, active=PROFILE_STEPS, repeat=1))
    out = run_ours(args, json.loads(args.overrides), profiler)
    events = profiler.key_averages()
    steps = max(1, sum(e.count for e in events if e.key.startswith("ProfilerStep")))
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
    out["profile"] = {"steps": steps, "ms_per_step": ms_by_kind(events, steps),
                      "top_ops": [{"op": e.key, "ms_per_step": e.self_cpu_time_total / 1000 / steps,
                                   "calls_per_step": e.count / steps} for e in top]}
    return out


def print_profile(profile: dict) -> None:
    total = sum(profile["ms_per_step"].values())
    if not total:
        print(f"\nno step was profiled: the run has fewer than {WARMUP_STEPS + 2 + 1} steps")
        return
    print(f"\nwhere a step of ours goes (torch.profiler, {profile['steps']} steps, self CPU time; "
          f"{total:.0f} ms per step under the profiler)")
    for group, ms in sorted(profile["ms_per_step"].items(), key=lambda kv: -kv[1]):
        print(f"  {group:50} {ms:8.1f} ms {100 * ms / total:5.1f}%")
    print("  top operators:")
    for op in profile["top_ops"]:
        print(f"    {op['op']:48} {op['ms_per_step']:8.1f} ms {op['calls_per_step']:7.0f} calls")


def child(args) -> None:
    began = os.getloadavg()[0]
    if args.variant == "peak":
        out = matmul_peak(args.threads)
    elif args.variant == "shape":
        out = model_shape(args.model)
    elif args.variant == "naive":
        out = run_naive(args)
    elif args.variant == "profile":
        out = profile_ours(args)
    else:
        out = run_ours(args, json.loads(args.overrides))
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    out["load"] = [began, os.getloadavg()[0]]
    Path(args.child_json).write_text(json.dumps(out))


# --- the parent: run every variant, print the table -------------------------------------------

def best_run(runs: list[dict]) -> dict:
    """The fastest round: the one the machine's other load disturbed least."""
    return max(runs, key=lambda r: r["tokens"] / r["seconds"])


def spawn(args, variant: str, overrides: dict | None = None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        path = fh.name
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--child-json", path,
           "--model", args.model, "--snapshot", args.snapshot, "--examples", str(args.examples),
           "--answer-refs", str(args.answer_refs),
           "--naive-steps", str(args.naive_steps), "--threads", str(args.threads),
           "--overrides", json.dumps(overrides or {})]
    subprocess.run(cmd, check=True)
    out = json.loads(Path(path).read_text())
    os.unlink(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="a model folder (default: the built-in, converted)")
    parser.add_argument("--workspace", default=DEFAULT_WORKSPACE, help="where the built-in model is converted")
    parser.add_argument("--snapshot", default="", help="a dataset snapshot file or folder (default: Acme references)")
    parser.add_argument("--examples", type=int, default=42, help="examples of the snapshot used by every variant")
    parser.add_argument("--answer-refs", type=int, default=1,
                        help="Acme references joined into each answer (longer examples)")
    parser.add_argument("--naive-steps", type=int, default=3, help="timed steps of the naive recipe")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--levers", action="store_true", help="also measure each speed lever")
    parser.add_argument("--rounds", type=int, default=2, help="alternating naive/ours rounds")
    parser.add_argument("--lever-rounds", type=int, default=1, help="rounds over the lever variants")
    parser.add_argument("--profile", action="store_true",
                        help="also profile ours: where a step's time goes, by kind of operator")
    parser.add_argument("--json", default=str(ROOT / "bench" / "out" / "sft.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--child-json", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.answer_refs < 1:
        parser.error(f"--answer-refs must be at least 1, got {args.answer_refs}")
    if args.child:
        return child(args)
    if not args.model:
        from selftrain.config import load_settings
        from selftrain.models.base import resolve_base_model

        settings = load_settings(args.workspace)
        args.model = resolve_base_model(settings.base_model, settings.model_cache_dir)

    started = time.time()
    load_before = os.getloadavg()
    shape = spawn(args, "shape")
    peaks = [spawn(args, "peak")]
    # Naive and ours alternate for --rounds rounds, so a change in the machine's load hits
    # both; each is reported by its fastest round.
    rounds: dict[str, list[dict]] = {NAIVE: [], "ours": []}
    for _ in range(args.rounds):
        rounds[NAIVE].append(spawn(args, "naive"))
        rounds["ours"].append(spawn(args, "ours", {}))
    runs = {name: best_run(rs) for name, rs in rounds.items()}
    if args.levers:
        levers = dict(LEVERS)
        other = 1 if args.threads > 1 else (os.cpu_count() or 1)
        if other != args.threads:
            levers[f"ours, {other} thread(s) instead of {args.threads}"] = {"num_threads": other}
        levers["ours, num_threads = 0 (timed choice)"] = {"num_threads": 0}
        for _ in range(args.lever_rounds):  # every lever once per round, the fastest round kept
            for name, overrides in levers.items():
                rounds.setdefault(name, []).append(spawn(args, "ours", overrides))
        runs.update({name: best_run(rounds[name]) for name in levers})
    profile = spawn(args, "profile")["profile"] if args.profile else None
    peaks.append(spawn(args, "peak"))
    peak = max(p["bf16_gflops"] for p in peaks)

    naive_rate = runs[NAIVE]["tokens"] / runs[NAIVE]["seconds"]
    naive_cpu_rate = runs[NAIVE]["tokens"] / runs[NAIVE]["cpu_seconds"]
    table = []
    for name, r in runs.items():
        rate = r["tokens"] / r["seconds"]
        per_token = flops_per_token(shape, r["lengths"], r["loss_positions"])
        cpu_rate = r["tokens"] / r["cpu_seconds"] if r.get("cpu_seconds") else None
        table.append({"variant": name, "real_tokens_per_s": rate, "ratio_vs_naive": rate / naive_rate,
                      "tokens_per_cpu_s": cpu_rate, "cpu_ratio_vs_naive": cpu_rate / naive_cpu_rate if cpu_rate else None,
                      "mfu": rate * per_token / (peak * 1e9), "peak_rss_gb": r["peak_rss_gb"],
                      "timed_steps": r["steps"], "gflop_per_token": per_token / 1e9, "load": r["load"],
                      "rounds": [x["tokens"] / x["seconds"] for x in rounds.get(name, [])]})
    header = (f"{'variant':50} {'real tok/s':>10} {'x naive':>8} {'tok/CPU-s':>10} {'x naive':>8} {'MFU':>6} "
              f"{'peak GB':>8} {'load':>10}")
    print(header)
    print("-" * len(header))
    for row in table:
        cpu = (f"{row['tokens_per_cpu_s']:10.0f} {row['cpu_ratio_vs_naive']:8.2f}" if row["tokens_per_cpu_s"]
               else f"{'-':>10} {'-':>8}")
        print(f"{row['variant']:50} {row['real_tokens_per_s']:10.1f} {row['ratio_vs_naive']:8.2f} {cpu} "
              f"{100 * row['mfu']:5.1f}% {row['peak_rss_gb']:8.2f} {row['load'][0]:4.1f}-{row['load'][1]:4.1f}")
    ours = next(row for row in table if row["variant"] == "ours")
    print(f"\nbf16 matmul peak {peak:.0f} GF/s (fp32 {max(p['fp32_gflops'] for p in peaks):.0f}), "
          f"{args.threads} thread(s); load average {load_before[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end; "
          f"{time.time() - started:.0f} s")
    print(f"targets: ≥{TARGET_RATIO:g}× naive: {ours['ratio_vs_naive']:.2f}× (per CPU second "
          f"{ours['cpu_ratio_vs_naive']:.2f}×); MFU ≥{100 * TARGET_MFU:.0f}%: "
          f"{100 * ours['mfu']:.1f}%; peak memory <{TARGET_MEMORY_GB:g} GB: {ours['peak_rss_gb']:.2f} GB")
    if profile:
        print_profile(profile)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M:%S"), "threads": args.threads,
                               "examples": args.examples, "bf16_peak_gflops": peak, "peaks": peaks,
                               "model": shape, "load_before": load_before, "load_after": os.getloadavg(),
                               "rows": table, "profile": profile}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

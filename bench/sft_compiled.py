"""Would a compiler make our LoRA step faster? Ours, as `training.sft.run` trains (eager), against
the same step with each decoder layer's work around attention compiled by inductor
(`torch.compile`), in one process, alternating.

    python bench/sft_compiled.py [--model DIR] [--workspace DIR] [--examples N] [--pairs N]
                                 [--steps N] [--threads N] [--unpacked] [--json FILE]

Ours is set up as `sft.run` sets it up: packed rows with segment attention, fast dropout, the
fused LoRA layers, packed frozen weights, bf16 adapters with fp32 masters, fused AdamW, the
blockwise loss. The compiled variant replaces each decoder layer's forward by two compiled
functions around our (eager) segment attention: RMSNorm, the q/k/v linears with their
adapters on one dropout mask (as the fused layers) and the rotary embedding; then o_proj with
its adapter, the residual, RMSNorm, the gated MLP and the residual. The token dimension is
dynamic, so one compilation serves every layer and batch. The frozen matmuls are ours: q/k/v
as one stacked weight, on the same packed copies, through a custom operator (`--unpacked`:
plain `F.linear`, oneDNN reorders the weight at every call), and dropout uses FastDropout's
random bits, drawn eagerly and passed in (inductor's own random numbers measured ~6× slower
here: bench/RESULTS.md).

For Llama and Mistral models, LoRA on the attention projections (the default targets), bf16.

Printed: the loss of one batch both ways with dropout off (they must agree to bf16 rounding),
the first steps' time (compilation), tokens/s of each and their ratio per pair, the median
ratio, and self CPU time per step by kind of work for each (`torch.profiler`). The question
it answers: does the step's non-matmul remainder, which decides on a CPU with AMX, shrink?
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sft import DEFAULT_WORKSPACE, load_examples, ms_by_kind  # noqa: E402

COMPILED = "compiled regions (inductor's kernels)"
# Inductor computes a fused region in fp32 and rounds to bf16 once where eager rounds every
# operator's result: the losses differ by ~0.5% (0.2% with inductor's emulate_precision_casts).
LOSS_TOLERANCE = 0.02
PROFILE_ROUNDS = 3
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
COMPILED_MODELS = ("llama", "mistral")  # the layer as `before` and `after` write it


def build(args):
    """The model, rows, optimizer and one training step, set up as `sft.run` sets them up."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    from selftrain.models.base import load_model
    from selftrain.training.precision import MasterWeights
    from selftrain.training.sft import SFTConfig, batch_loss, evaluate_loss, tokenize, use_speed_levers

    config = SFTConfig()
    model, tokenizer = load_model(args.model, config.dtype, trainable_adapter=True)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=config.lora_r,
                                             lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                             target_modules=list(ATTENTION_TARGETS)))
    model.train()
    rows = tokenize(load_examples("", args.examples), tokenizer, config)
    packed, logits = use_speed_levers(model, config)
    if not packed:
        sys.exit("this model does not route attention through transformers' AttentionInterface")
    params = [p for p in model.parameters() if p.requires_grad]
    masters = MasterWeights(params, torch.bfloat16)
    optimizer = torch.optim.AdamW(masters.masters, lr=config.learning_rate, weight_decay=config.weight_decay,
                                  fused=True)
    batches = [rows[i:i + config.batch_size] for i in range(0, len(rows) - 1, config.batch_size)]
    pad_id = tokenizer.pad_token_id

    def step(index: int) -> tuple[int, float]:
        started = time.perf_counter()
        loss, _, tokens = batch_loss(model, batches[index % len(batches)], pad_id, packed, logits)
        loss.backward()
        masters.grads_to_masters()
        torch.nn.utils.clip_grad_norm_(masters.masters, config.max_grad_norm, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        masters.masters_to_params()
        return tokens, time.perf_counter() - started

    def loss_of(index: int) -> float:
        return evaluate_loss(model, batches[index], pad_id, config.batch_size, packed, logits)

    return model, config, step, loss_of


def compiled_layers(model, p: float, packed: bool):
    """Each decoder layer's compiled forward; `switch(True)` installs them, `switch(False)`
    gives the layers their own forward back."""
    import torch
    import torch.nn.functional as F

    from selftrain.training.packing import causal_attention
    from selftrain.training.precision import drop_threshold, random_lanes

    layers = model.get_base_model().model.layers
    weights: dict = {}  # a frozen weight's data_ptr -> ours' packed copies of it (prepack.PackedWeight)

    @torch.library.custom_op("selftrain_bench::frozen_linear", mutates_args=(),
                             schema="(Tensor x, Tensor weight) -> Tensor")
    def frozen_linear(x, weight):
        rows = x.reshape(-1, x.shape[-1])
        return weights[weight.data_ptr()].linear(rows).view(*x.shape[:-1], weight.shape[0])

    @frozen_linear.register_fake
    def _(x, weight):
        return x.new_empty(*x.shape[:-1], weight.shape[0])

    @torch.library.custom_op("selftrain_bench::frozen_linear_grad", mutates_args=(),
                             schema="(Tensor grad, Tensor weight) -> Tensor")
    def frozen_linear_grad(grad, weight):
        rows = grad.reshape(-1, grad.shape[-1])
        return weights[weight.data_ptr()].grad_input(rows).view(*grad.shape[:-1], weight.shape[1])

    @frozen_linear_grad.register_fake
    def _(grad, weight):
        return grad.new_empty(*grad.shape[:-1], weight.shape[1])

    def setup_context(ctx, inputs, output):
        ctx.weight = inputs[1]

    frozen_linear.register_autograd(lambda ctx, grad: (frozen_linear_grad(grad, ctx.weight), None),
                                    setup_context=setup_context)
    linear = frozen_linear if packed else F.linear
    threshold, rescale = drop_threshold(p), 1.0 / (1.0 - p)

    def norm(x, weight, eps):  # transformers' LlamaRMSNorm
        h = x.float()
        return weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    def dropped(x, lanes):
        return x if lanes is None else x * (lanes >= threshold).to(x.dtype) * rescale

    def lora(x, a, b, scale):
        return F.linear(F.linear(x, a), b) * scale

    def before(x, ln, eps, wqkv, aq, ak, av, bq, bk, bv, scale, cos, sin, heads, kv_heads, dim, lanes):
        h = norm(x, ln, eps)
        d = dropped(h, lanes)
        q, k, v = linear(h, wqkv).split((heads * dim, kv_heads * dim, kv_heads * dim), -1)
        q = q + lora(d, aq, bq, scale)
        k = k + lora(d, ak, bk, scale)
        v = v + lora(d, av, bv, scale)
        t = x.shape[1]
        q = q.view(1, t, heads, dim).transpose(1, 2)
        k = k.view(1, t, kv_heads, dim).transpose(1, 2)
        v = v.view(1, t, kv_heads, dim).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)

        def rotated(u):
            return torch.cat((-u[..., dim // 2:], u[..., :dim // 2]), -1)
        return q * cos + rotated(q) * sin, k * cos + rotated(k) * sin, v

    def after(a, residual, wo, ao, bo, scale, ln, eps, wg, wu, wd, lanes):
        h = residual + (linear(a, wo) + lora(dropped(a, lanes), ao, bo, scale))
        n = norm(h, ln, eps)
        return h + linear(F.silu(linear(n, wg)) * linear(n, wu), wd)

    before_c, after_c = torch.compile(before), torch.compile(after)

    def fused_group(m):
        group = getattr(m.__dict__.get("forward"), "fused_group", None)
        if group is None or (packed and group.packed is None):
            sys.exit("ours did not fuse (and pack) this model's attention projections")
        return group

    def lanes_for(t, training):
        if not training or p == 0:
            return None
        lanes = random_lanes(t.shape)
        torch._dynamo.mark_dynamic(lanes, 1)
        return lanes

    def forward_of(layer):
        attn, mlp = layer.self_attn, layer.mlp
        heads, kv_heads = attn.config.num_attention_heads, attn.config.num_key_value_heads
        dim = attn.head_dim
        q, k, v, o = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        scale = q.scaling["default"]

        qkv, single = fused_group(q), fused_group(o)  # ours' frozen weights: q/k/v stacked, o alone
        if packed:
            for group in (qkv, single):
                weights[group.weight.data_ptr()] = group.packed
            for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
                copies = getattr(m.__dict__.get("forward"), "packed_weight", None)
                if copies is None:
                    sys.exit("ours did not pack this model's MLP weights (too little memory free?); try --unpacked")
                weights[m.weight.data_ptr()] = copies

        def adapter(m):
            return m.lora_A["default"].weight, m.lora_B["default"].weight

        def forward(hidden_states, attention_mask=None, position_ids=None, cache=None, use_cache=False,
                    position_embeddings=None, **kwargs):
            cos, sin = position_embeddings
            for t in (hidden_states, cos, sin):
                torch._dynamo.mark_dynamic(t, 1)
            (aq, bq), (ak, bk), (av, bv) = adapter(q), adapter(k), adapter(v)
            ln1 = layer.input_layernorm
            qs, ks, vs = before_c(hidden_states, ln1.weight, ln1.variance_epsilon, qkv.weight, aq, ak, av,
                                  bq, bk, bv, scale, cos, sin, heads, kv_heads, dim,
                                  lanes_for(hidden_states, layer.training))
            outs, start = [], 0
            for length in kwargs["segment_lengths"]:
                end = start + length
                outs.append(causal_attention(qs[:, :, start:end], ks[:, :, start:end], vs[:, :, start:end],
                                             attn.scaling))
                start = end
            a = torch.cat(outs, 2).transpose(1, 2).reshape(1, -1, heads * dim)
            torch._dynamo.mark_dynamic(a, 1)
            ao, bo = adapter(o)
            ln2 = layer.post_attention_layernorm
            return after_c(a, hidden_states, single.weight, ao, bo, scale, ln2.weight, ln2.variance_epsilon,
                           mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight,
                           lanes_for(a, layer.training))
        return forward

    if model.get_base_model().config.model_type not in COMPILED_MODELS:
        sys.exit(f"the compiled variant covers {', '.join(COMPILED_MODELS)} layers only")
    forwards = [forward_of(layer) for layer in layers]

    def switch(on: bool) -> None:
        for layer, forward in zip(layers, forwards):
            if on:
                layer.forward = forward
            elif "forward" in layer.__dict__:
                del layer.forward
    return switch


def profile(step, first: int, steps: int) -> dict:
    """Self CPU milliseconds per step by kind of work over `steps` steps (bench/sft.py's kinds,
    and the compiled regions' own kernels)."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(first + i)
    events = prof.key_averages()
    graphs = [e for e in events if e.key.startswith("## Call CompiledFxGraph")]
    kinds = ms_by_kind([e for e in events if not e.key.startswith("## Call CompiledFxGraph")], steps)
    kinds[COMPILED] = sum(e.self_cpu_time_total for e in graphs) / 1000 / steps
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="a model folder (default: the built-in, converted)")
    parser.add_argument("--workspace", default=DEFAULT_WORKSPACE, help="where the built-in model is converted")
    parser.add_argument("--examples", type=int, default=42)
    parser.add_argument("--pairs", type=int, default=8, help="alternating eager/compiled pairs")
    parser.add_argument("--steps", type=int, default=4, help="steps per side of a pair")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--unpacked", action="store_true", help="compiled frozen matmuls on plain weights")
    parser.add_argument("--json", default=str(ROOT / "bench" / "out" / "sft_compiled.json"))
    args = parser.parse_args()
    if args.pairs < 1 or args.steps < 1:
        parser.error("--pairs and --steps must be at least 1")
    import torch

    torch.set_num_threads(args.threads)
    if not args.model:
        from selftrain.config import load_settings
        from selftrain.models.base import resolve_base_model

        settings = load_settings(args.workspace)
        args.model = resolve_base_model(settings.base_model, settings.model_cache_dir)
    began = time.time()
    model, config, step, loss_of = build(args)
    switch = compiled_layers(model, config.lora_dropout, packed=not args.unpacked)

    losses, warmup = {}, {}
    for compiled in (False, True):  # the same weights: before any step
        switch(compiled)
        losses[compiled] = loss_of(0)
    for compiled in (False, True):
        switch(compiled)
        started = time.perf_counter()
        for i in range(3):
            step(i)
        warmup[compiled] = time.perf_counter() - started
    gap = abs(losses[True] - losses[False]) / losses[False]
    print(f"loss of batch 0, dropout off: eager {losses[False]:.5f}, compiled {losses[True]:.5f} "
          f"({100 * gap:.2f}% apart)")
    if gap > LOSS_TOLERANCE:
        sys.exit(f"the compiled variant computes another loss (over {100 * LOSS_TOLERANCE:.0f}% apart): not timed")
    print(f"first 3 steps (compilation included): eager {warmup[False]:.1f} s, compiled {warmup[True]:.1f} s")

    pairs, index = [], 3
    print(f"\n{'pair':>4} {'eager tok/s':>12} {'compiled tok/s':>15} {'ratio':>7}")
    for pair in range(args.pairs):
        speed = {}
        for compiled in ((False, True) if pair % 2 == 0 else (True, False)):
            switch(compiled)
            tokens = seconds = 0.0
            for _ in range(args.steps):
                n, s = step(index)
                index += 1
                tokens, seconds = tokens + n, seconds + s
            speed[compiled] = tokens / seconds
        pairs.append({"eager": speed[False], "compiled": speed[True], "ratio": speed[True] / speed[False]})
        print(f"{pair:>4} {speed[False]:>12.1f} {speed[True]:>15.1f} {pairs[-1]['ratio']:>7.3f}", flush=True)
    median = statistics.median(p["ratio"] for p in pairs)
    print(f"median ratio compiled / eager: {median:.3f} ({min(p['ratio'] for p in pairs):.3f}–"
          f"{max(p['ratio'] for p in pairs):.3f})")

    # The host's speed drifts within a run: profile each variant in alternating rounds and keep
    # its fastest round.
    kinds = {}
    for _ in range(PROFILE_ROUNDS):
        for compiled in (False, True):
            switch(compiled)
            name = "compiled" if compiled else "eager"
            got = profile(step, index, args.steps)
            index += args.steps
            if name not in kinds or sum(got.values()) < sum(kinds[name].values()):
                kinds[name] = got
    print(f"\nself CPU ms per step by kind (torch.profiler, {args.steps} steps; fastest of "
          f"{PROFILE_ROUNDS} alternating rounds each)")
    names = sorted(set(kinds["eager"]) | set(kinds["compiled"]), key=lambda k: -kinds["eager"].get(k, 0.0))
    print(f"  {'kind':55} {'eager':>8} {'compiled':>9}")
    for name in names:
        print(f"  {name:55} {kinds['eager'].get(name, 0.0):8.1f} {kinds['compiled'].get(name, 0.0):9.1f}")
    print(f"  {'total':55} {sum(kinds['eager'].values()):8.1f} {sum(kinds['compiled'].values()):9.1f}")

    out = {"model": args.model, "threads": args.threads, "packed": not args.unpacked, "losses": losses,
           "warmup_seconds": warmup, "pairs": pairs, "median_ratio": median, "ms_per_step": kinds,
           "seconds": time.time() - began}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()

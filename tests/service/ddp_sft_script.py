"""Run by tests/service/test_service_ddp.py under `accelerate launch` (one copy per rank):
LoRA SFT on the tiny model, then a JSON line per rank saying what this rank saw."""

import json
import os
import sys
from pathlib import Path

from selftrain.data.curate import Example
from selftrain.training import sft

model_dir, out_dir = sys.argv[1], Path(sys.argv[2])
examples = [Example(i, f"Write a Python function `add_{i}(x)` that returns x + {i}.",
                    f"def add_{i}(x):\n    return x + {i}\n", "", "math", "accepted") for i in range(18)]
config = sft.SFTConfig(epochs=1, batch_size=2, eval_fraction=0.1, eval_steps=1000, warmup_steps=0, seed=0)
result = sft.run(config, examples, model_dir, out_dir / "adapter")

import torch.distributed as dist  # noqa: E402 - after the run: did the recipe set up distribution?

rank = int(os.environ.get("RANK", 0))
(out_dir / f"rank{rank}.json").write_text(json.dumps({
    "rank": rank, "world_size": dist.get_world_size() if dist.is_initialized() else 1,
    "steps": result.steps, "n_train": result.n_train, "eval_loss": result.eval_loss}))

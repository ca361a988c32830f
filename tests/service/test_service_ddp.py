"""Multi-process training: the SFT recipe under `accelerate launch` with 2 CPU processes
(DDP over gloo), the same command that scales to GPUs and nodes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, service_env

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("ddp_sft_script.py")


def test_sft_under_accelerate_launch_with_two_cpu_processes(tiny_model_dir, tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
               str(SCRIPT), str(tiny_model_dir), str(tmp_path)]
    done = subprocess.run(command, env=service_env(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1"),
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # 18 examples, 2 held out: 16 to train on, 8 per rank, 4 steps of 2 (one process: 8 steps).
    assert [r["steps"] for r in ranks] == [4, 4]
    # Different data on each rank, same weights after every step (gradients all-reduced):
    # the eval loss on the shared eval split comes out the same on both.
    assert ranks[0]["eval_loss"] == pytest.approx(ranks[1]["eval_loss"], rel=1e-6)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()

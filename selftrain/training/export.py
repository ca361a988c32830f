"""Exporting a trained adapter: as the PEFT adapter folder it is, or merged into the base
model as a standalone safetensors checkpoint that any Hugging Face loader reads without
PEFT (`AutoModelForCausalLM.from_pretrained(folder)`).

The merge is done in fp32 (W + (α/r)·B·A) and rounded once to the base checkpoint's own
dtype, so the export is as close to base+adapter as that dtype allows. The folder is
written under a temporary name and renamed into place: it is either complete or absent.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from selftrain.errors import SelftrainError


def export_adapter(adapter_dir: Path, base_location: str, output_dir: Path, *, merged: bool,
                   dtype: str = "auto") -> Path:
    """Write the export to `output_dir` (which must not exist yet); returns it.

    dtype: "auto" (the base checkpoint's), "bfloat16" or "float32"; used only when merged.
    """
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    if output_dir.exists():
        raise SelftrainError(f"{output_dir} already exists; choose another --output or remove it.")
    if not (adapter_dir / "adapter_config.json").exists():
        raise SelftrainError(f"{adapter_dir} is not a LoRA adapter folder (it has no adapter_config.json).")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the export from other users
    try:
        if merged:
            _write_merged(adapter_dir, base_location, tmp, dtype)
        else:
            shutil.copytree(adapter_dir, tmp, dirs_exist_ok=True)
        tmp.rename(output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir


def _write_merged(adapter_dir: Path, base_location: str, out: Path, dtype: str) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoConfig

    from selftrain.models.base import load_model

    if dtype == "auto":
        stored = getattr(AutoConfig.from_pretrained(base_location), "dtype", None)
        target = stored if isinstance(stored, torch.dtype) else getattr(torch, str(stored or "float32"), torch.float32)
    else:
        target = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    model, tokenizer = load_model(base_location, "float32")
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model = model.to(target)
    model.config.dtype = target
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)

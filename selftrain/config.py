"""One settings object for the whole system.

Every field carries its default, unit and meaning; the TOML file that `selftrain init`
writes and the `SELFTRAIN_*` environment overrides are both derived from this class,
never re-declared. Precedence: defaults < `<workspace>/selftrain.toml` < environment.

Defaults marked "spec" come from the system's training documentation.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from selftrain.errors import SelftrainError

CONFIG_NAME = "selftrain.toml"
DEFAULT_WORKSPACE = Path(".selftrain")
ENV_PREFIX = "SELFTRAIN_"


def _f(default, help: str, section: str):
    metadata = {"help": help, "section": section}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class Settings:
    """All of selftrain's settings. `workspace` is where the database, artifacts and
    model cache live; it is chosen on the command line (`--workspace`) or through
    `SELFTRAIN_WORKSPACE`, never inside the file that lives in it."""

    workspace: Path = DEFAULT_WORKSPACE

    # --- storage ---
    database_url: str = _f(
        "", "SQLAlchemy URL; empty means a SQLite file `selftrain.db` in the workspace. "
        "Example: postgresql+psycopg://user@127.0.0.1:5432/selftrain", "storage")

    # --- model ---
    base_model: str = _f(
        "smollm2-135m-instruct", "Base model: the built-in alias, a local Hugging Face "
        "checkpoint folder, or a Hugging Face model id already in the local cache.", "model")
    allow_model_downloads: bool = _f(
        False, "Let a Hugging Face model id be downloaded when it is not in the local cache "
        "(off: runs never touch the network).", "model")
    prompt_format: str = _f(
        "chat", "How requests are shown to the model, in training and in generation: "
        "'chat' (the model's chat template) or 'instruction' (the spec's "
        "### Instruction / ### Code / ### Explanation layout).", "model")
    dtype: str = _f("auto", "Weights dtype for training and generation: auto (bfloat16 where the "
                    "hardware computes it natively — AMX/AVX512-BF16 CPUs, recent GPUs — else float32), "
                    "bfloat16 or float32.", "model")
    max_new_tokens: int = _f(256, "Most tokens generated per answer.", "model")
    generation_batch_size: int = _f(8, "Prompts generated together in one batch.", "model")

    # --- loop (spec) ---
    learning_threshold: int = _f(100, "New interactions that trigger a learning cycle (spec).", "loop")
    quality_threshold: float = _f(0.7, "Minimum quality score in [0, 1] for a training example (spec).", "loop")
    min_examples: int = _f(10, "Fewest curated examples a cycle will train on (spec).", "loop")
    improvement_threshold: float = _f(
        0.05, "Relative improvement of the candidate's mean score over the model in "
        "service required to deploy, e.g. 0.05 = 5% (spec).", "loop")
    significance_level: float = _f(0.05, "Alpha of the paired significance test the gate uses.", "loop")
    check_interval: int = _f(3600, "Seconds between the loop's checks for new interactions (spec).", "loop")
    carry_over_cycles: int = _f(
        3, "A cycle also learns again from the interactions of up to this many earlier cycles whose "
        "candidate failed the gate since the version in service was made, so user feedback is not lost "
        "when one cycle had too little of it (0 = never).", "loop")

    # --- curation ---
    curation_synthetic_per_example: int = _f(
        0, "AST-mutated variants generated per example (kept only if they still pass the "
        "example's tests in the sandbox); 0 turns synthesis off.", "curation")
    curation_balance: str = _f(
        "smallest", "Category balancing: 'smallest' (spec: down-sample every category to the "
        "smallest one) or 'none'.", "curation")
    curation_balance_floor: int = _f(
        10, "Balancing never cuts a category below this many examples.", "curation")
    curation_category_cap: int = _f(0, "Most examples kept per category (0 = no cap).", "curation")
    curation_min_coherence: float = _f(
        0.3, "Minimum semantic-coherence factor (does the code answer the prompt?) in [0, 1], "
        "applied besides the overall quality threshold.", "curation")
    curation_workers: int = _f(
        0, "Processes for curation's per-example work (scrubbing, parsing, scoring, mutation); 0 = "
        "one per CPU core. Under 200 distinct examples it always runs in one process.", "curation")

    # --- serve ---
    serve_batch_size: int = _f(8, "Most requests the server generates together in one batch.", "serve")
    serve_batch_wait_ms: float = _f(5.0, "Milliseconds the server waits to fill a batch once a request arrives.", "serve")
    serve_queue_size: int = _f(64, "Requests that may wait for generation; more get HTTP 429.", "serve")
    serve_max_prompt_tokens: int = _f(2048, "Longest prompt the API accepts, in tokens (longer: 422).", "serve")
    serve_max_tokens: int = _f(1024, "Most tokens one API request may ask to generate (max_tokens).", "serve")
    serve_torch_threads: int = _f(1, "Intra-op threads for generation; 1 is fastest on a busy machine, "
                                  "0 = torch's default.", "serve")
    serve_key_cache_s: float = _f(10.0, "Seconds an API key lookup is cached; a revoked key stops "
                                  "working within this time.", "serve")
    serve_import_max_mb: int = _f(64, "Largest JSONL body /api/admin/import accepts, MiB.", "serve")

    # --- service ---
    job_lease_seconds: float = _f(
        60.0, "Seconds a worker holds a job without renewing; renewed every third of it. A job "
        "whose worker died is requeued when its lease runs out.", "service")
    worker_poll_interval: float = _f(2.0, "Seconds between a worker's looks at an empty queue.", "service")
    job_max_attempts: int = _f(
        3, "Times a job may be started when its process dies; a job that raises fails at once.", "service")
    cycle_priority: int = _f(10, "Priority of the cycle jobs the loop queues (higher runs first).", "service")
    watch_enabled: bool = _f(True, "Watch user feedback after each deployment and roll back when "
                             "the new version is significantly worse.", "service")
    watch_window: int = _f(50, "Answers with feedback needed from a new version before judging it.", "service")
    watch_alpha: float = _f(0.05, "Significance level of the post-deploy watch, split over its two "
                            "tests (acceptance and ratings).", "service")

    # --- LoRA (spec) ---
    lora_r: int = _f(8, "LoRA rank r: the update is B·A with B ∈ R^{d×r} (up) and A ∈ R^{r×k} (down).", "lora")
    lora_alpha: int = _f(32, "LoRA scaling α; the update is scaled by α/r.", "lora")
    lora_dropout: float = _f(0.1, "Dropout on the LoRA input during training.", "lora")
    lora_target_modules: list[str] = _f(
        [], "Module names to adapt; empty means detect from the architecture "
        "(Llama: q/k/v/o_proj, GPT-2: c_attn/c_proj).", "lora")

    # --- training (spec) ---
    epochs: int = _f(3, "Passes over the training split (spec).", "training")
    batch_size: int = _f(2, "Examples per optimizer step (spec).", "training")
    learning_rate: float = _f(2e-4, "Peak AdamW learning rate (a common LoRA value; the spec's "
                              "search space spans 1e-5 to 5e-4).", "training")
    warmup_steps: int = _f(100, "Linear warmup steps (spec), capped at 10% of a short run's steps.", "training")
    weight_decay: float = _f(0.01, "AdamW weight decay (spec).", "training")
    max_length: int = _f(512, "Longest training sequence in tokens (spec); longer examples are truncated.", "training")
    eval_fraction: float = _f(0.1, "Share of curated examples held out to measure eval loss.", "training")
    eval_steps: int = _f(50, "Optimizer steps between eval-loss measurements (spec).", "training")
    seed: int = _f(0, "Seed for data splits, shuffling and LoRA initialisation.", "training")

    # --- RL after SFT ---
    cycle_rl: str = _f(
        "none", "After a cycle's SFT, align its candidate with RL before the gate: 'dpo' on the stored "
        "preference pairs (when there are at least rl_min_pairs), 'ppo' with the execution reward on "
        "recent prompts, or 'none'. `selftrain jobs submit rl` runs either on its own.", "rl")
    rl_min_pairs: int = _f(8, "Fewest preference pairs DPO trains on; with fewer a cycle skips RL.", "rl")
    rl_iterations: int = _f(20, "PPO iterations (rollout, reward, update) per RL run.", "rl")

    # --- evaluation ---
    eval_suite: str = _f(
        "demo", "Problems the gate evaluates on: 'demo' (bundled) or a JSONL file of "
        "{task_id, prompt, entry_point, tests}.", "evaluation")
    eval_limit: int = _f(0, "Evaluate on at most this many problems (0 = all).", "evaluation")
    evaluation_cache: bool = _f(
        True, "Reuse a greedy evaluation of an unchanged model on the same problems with the same "
        "settings (<workspace>/artifacts/eval_cache), e.g. the model in service at every cycle's gate.",
        "evaluation")

    # --- sandbox ---
    sandbox_timeout_s: float = _f(10.0, "Wall-clock seconds one program may run.", "sandbox")
    sandbox_memory_mb: int = _f(1024, "Address-space limit of one program, MiB.", "sandbox")
    sandbox_workers: int = _f(2, "Programs run in parallel.", "sandbox")
    allow_unsafe_execution: bool = _f(
        False, "Run generated code without bubblewrap isolation when it is unavailable "
        "(dangerous; never on a shared machine).", "sandbox")

    # --- derived locations ---
    @property
    def config_path(self) -> Path:
        return self.workspace / CONFIG_NAME

    @property
    def artifacts_dir(self) -> Path:
        return self.workspace / "artifacts"

    @property
    def model_cache_dir(self) -> Path:
        return self.workspace / "models"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.workspace / 'selftrain.db').resolve()}"


def setting_fields() -> list[dataclasses.Field]:
    """The fields a user can set in the TOML file or the environment."""
    return [f for f in dataclasses.fields(Settings) if f.name != "workspace"]


def _coerce(name: str, value, annotation: str, origin: str):
    """Convert a TOML or environment value to the field's type, or say what was expected."""
    expected = {"int": "an integer", "float": "a number", "bool": "true or false",
                "str": "a string", "list[str]": "a list of strings"}[annotation]
    from_env = isinstance(value, str) and origin.startswith("environment")
    try:
        if annotation == "bool":
            if from_env and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.lower() in ("1", "true", "yes", "on")
            if isinstance(value, bool):
                return value
        elif annotation == "int":
            if from_env:
                return int(value)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif annotation == "float":
            if from_env:
                return float(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif annotation == "str":
            if isinstance(value, str):
                return value
        elif annotation == "list[str]":
            if from_env:
                return [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
    except ValueError:
        pass
    raise SelftrainError(f"Setting '{name}' in {origin} must be {expected}, got {value!r}.")


def load_settings(workspace: Path | str | None = None, env: dict[str, str] | None = None) -> Settings:
    """Build the settings for a workspace: defaults, then its TOML file, then the environment."""
    env = os.environ if env is None else env
    workspace = Path(workspace or env.get(ENV_PREFIX + "WORKSPACE") or DEFAULT_WORKSPACE)
    values: dict = {}
    path = workspace / CONFIG_NAME
    known = {f.name: f for f in setting_fields()}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SelftrainError(f"Could not read the settings file {path}: {exc}.") from None
        for key, value in data.items():
            if key not in known:
                raise SelftrainError(f"Unknown setting '{key}' in {path}; `selftrain init --force` "
                                     "writes a file listing every setting.")
            values[key] = _coerce(key, value, known[key].type, str(path))
    for name, f in known.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _coerce(name, raw, f.type, f"environment variable {ENV_PREFIX}{name.upper()}")
    settings = Settings(workspace=workspace, **values)
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    """Reject values that would only fail later, deep inside a training run."""
    checks = [
        (s.prompt_format in ("chat", "instruction"), "prompt_format", "'chat' or 'instruction'"),
        (s.dtype in ("auto", "bfloat16", "float32"), "dtype", "'auto', 'bfloat16' or 'float32'"),
        (0 <= s.quality_threshold <= 1, "quality_threshold", "a number in [0, 1]"),
        (0 < s.significance_level < 1, "significance_level", "a number in (0, 1)"),
        (0 < s.eval_fraction < 1, "eval_fraction", "a number in (0, 1)"),
        (s.improvement_threshold >= 0, "improvement_threshold", "a number ≥ 0"),
        (s.serve_batch_wait_ms >= 0, "serve_batch_wait_ms", "a number ≥ 0"),
        (s.serve_torch_threads >= 0, "serve_torch_threads", "an integer ≥ 0 (0 = torch's default)"),
        (s.serve_key_cache_s >= 0, "serve_key_cache_s", "a number ≥ 0"),
        (s.job_lease_seconds > 0, "job_lease_seconds", "a positive number"),
        (s.worker_poll_interval > 0, "worker_poll_interval", "a positive number"),
        (0 < s.watch_alpha < 1, "watch_alpha", "a number in (0, 1)"),
        (s.curation_balance in ("smallest", "none"), "curation_balance", "'smallest' or 'none'"),
        (0 <= s.curation_min_coherence <= 1, "curation_min_coherence", "a number in [0, 1]"),
        (s.curation_synthetic_per_example >= 0, "curation_synthetic_per_example", "an integer ≥ 0"),
        (s.curation_category_cap >= 0, "curation_category_cap", "an integer ≥ 0 (0 = no cap)"),
        (s.curation_workers >= 0, "curation_workers", "an integer ≥ 0 (0 = one per CPU core)"),
        (s.carry_over_cycles >= 0, "carry_over_cycles", "an integer ≥ 0 (0 = never)"),
        (s.cycle_rl in ("none", "dpo", "ppo"), "cycle_rl", "'none', 'dpo' or 'ppo'"),
        (s.rl_min_pairs >= 2, "rl_min_pairs", "an integer ≥ 2"),
        (s.rl_iterations >= 1, "rl_iterations", "a positive integer"),
    ]
    for name in ("learning_threshold", "min_examples", "check_interval", "lora_r", "lora_alpha",
                 "epochs", "batch_size", "max_length", "eval_steps", "max_new_tokens",
                 "generation_batch_size", "sandbox_workers", "sandbox_memory_mb", "job_max_attempts",
                 "watch_window", "serve_batch_size", "serve_queue_size", "serve_max_prompt_tokens",
                 "serve_max_tokens", "serve_import_max_mb"):
        checks.append((getattr(s, name) > 0, name, "a positive integer"))
    checks += [
        (0 <= s.lora_dropout < 1, "lora_dropout", "a number in [0, 1)"),
        (s.learning_rate > 0, "learning_rate", "a positive number"),
        (s.warmup_steps >= 0, "warmup_steps", "an integer ≥ 0"),
        (s.eval_limit >= 0, "eval_limit", "an integer ≥ 0 (0 = all)"),
        (s.sandbox_timeout_s > 0, "sandbox_timeout_s", "a positive number"),
    ]
    for ok, name, expected in checks:
        if not ok:
            raise SelftrainError(f"Setting '{name}' must be {expected}, got {getattr(s, name)!r}.")


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_default_toml() -> str:
    """The commented settings file `selftrain init` writes: every setting, at its default."""
    lines = ["# selftrain settings. Every key is optional; shown here at its default.",
             "# Environment variables SELFTRAIN_<KEY> (upper case) override this file.", ""]
    section = None
    for f in setting_fields():
        if f.metadata["section"] != section:
            section = f.metadata["section"]
            lines += [f"# --- {section} ---"]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines += [f"# {f.metadata['help']}", f"{f.name} = {_toml_value(default)}", ""]
    return "\n".join(lines)

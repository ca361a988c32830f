"""Simulated use: replay a stream of coding tasks as users would send them, let the real
loop learn from the answers and the feedback, and measure whether the model got better.

Each round, simulated users send the next tasks of the stream through the real serving
path (the FastAPI app and its batching engine, in process, with a user API key): the
prompt goes to `POST /api/generate` with the task's tests, the user runs the tests on the
answer in the sandbox and sends `POST /api/interactions/{id}/feedback` — accepted when
they pass; rejected when they fail, then with the reference solution as a correction on
a configurable share of failures; and a rating on a configurable share of answers. Then
the production cycle runs (`loop.run_cycle`: curate → train → evaluate → gate → deploy),
and the engine swaps to the new version if one was deployed.

The held-out split is never sent. It is divided, by task and within each convention,
into a gate set (the cycle's evaluation suite: what the deployment decision sees) and a
test set that only measures: after every cycle the model in service answers the test
set and HumanEval, and the report gives pass@1 with Wilson intervals and the exact
McNemar test against the base model on the same items. Measuring on tasks the gate never
saw keeps the reported gain free of the gate's selection.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from selftrain.config import Settings
from selftrain.errors import SelftrainError
from selftrain.evaluation.suites import RESOURCES, Problem, Suite
from selftrain.store.db import Database

ACME_TASKS = RESOURCES / "tasks" / "acme_tasks.jsonl"
SIMULATED_USER = "simulated-user"
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class Task:
    task_id: str
    convention: str
    prompt: str
    entry_point: str
    tests: str
    reference: str
    split: str  # train | heldout

    def problem(self) -> Problem:
        return Problem(self.task_id, self.prompt, self.entry_point, self.tests, self.reference, self.convention)


@dataclass
class SimulationConfig:
    cycles: int = 3
    tasks_per_cycle: int = 0  # 0 = the training stream split evenly over the cycles
    correction_share: float = 1.0  # of failed answers, the share the user corrects with the reference
    rating_share: float = 0.5  # of all answers, the share the user also rates
    gate_share: float = 0.5  # of the held-out tasks, the share the deployment gate evaluates on
    humaneval_limit: int = 0  # HumanEval problems measured after each cycle (0 = all 164, -1 = none)
    concurrency: int = 8  # simulated users asking at the same time
    seed: int = 0
    tasks_path: Path = ACME_TASKS

    def check(self) -> None:
        rules = [(self.cycles >= 1, "cycles", "at least 1"),
                 (self.tasks_per_cycle >= 0, "tasks_per_cycle", "0 (split the stream evenly) or more"),
                 (0 <= self.correction_share <= 1, "correction_share", "between 0 and 1"),
                 (0 <= self.rating_share <= 1, "rating_share", "between 0 and 1"),
                 (0 < self.gate_share < 1, "gate_share", "strictly between 0 and 1"),
                 (self.humaneval_limit >= -1, "humaneval_limit", "-1 (none), 0 (all) or a count"),
                 (self.concurrency >= 1, "concurrency", "at least 1")]
        for ok, name, rule in rules:
            if not ok:
                raise SelftrainError(f"Simulation option '{name}' must be {rule}, got {getattr(self, name)!r}.")


# --- the task corpus ----------------------------------------------------------------------


def load_tasks(path: Path) -> list[Task]:
    """Every task of a corpus file (the Acme corpus's format), validated whole."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SelftrainError(f"Could not read the task corpus {path}: {getattr(exc, 'strerror', None) or exc}.") from None
    tasks, seen = [], set()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SelftrainError(f"{path}, line {n}: not valid JSON ({exc.msg}).") from None
        if not isinstance(obj, dict):
            raise SelftrainError(f"{path}, line {n}: expected a JSON object.")
        for key in ("task_id", "prompt", "entry_point", "tests", "reference", "split"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise SelftrainError(f"{path}, line {n}: field '{key}' must be a non-empty string.")
        if obj["split"] not in ("train", "heldout"):
            raise SelftrainError(f"{path}, line {n}: split must be 'train' or 'heldout', got {obj['split']!r}.")
        if obj["task_id"] in seen:
            raise SelftrainError(f"{path}, line {n}: task_id {obj['task_id']!r} appears twice.")
        seen.add(obj["task_id"])
        tasks.append(Task(obj["task_id"], str(obj.get("convention") or "other"), obj["prompt"],
                          obj["entry_point"], obj["tests"], obj["reference"], obj["split"]))
    train = [t for t in tasks if t.split == "train"]
    heldout = [t for t in tasks if t.split == "heldout"]
    if not train or len(heldout) < 2:
        raise SelftrainError(f"The task corpus {path} needs training tasks and at least 2 held-out tasks; "
                             f"it has {len(train)} and {len(heldout)}.")
    shared = {t.entry_point for t in train} & {t.entry_point for t in heldout}
    if shared:
        raise SelftrainError(f"The task corpus {path} has functions in both splits ({', '.join(sorted(shared)[:5])}); "
                             "held-out tasks must not reach training.")
    return tasks


def split_heldout(heldout: list[Task], gate_share: float, seed: int) -> tuple[list[Task], list[Task]]:
    """(gate, test): within each convention, a seeded shuffle puts round(n × gate_share)
    tasks in the gate set and the rest in the test set, so both cover every convention.
    Neither set may be empty."""
    by_convention: dict[str, list[Task]] = defaultdict(list)
    for task in sorted(heldout, key=lambda t: t.task_id):
        by_convention[task.convention].append(task)
    rng = random.Random(f"heldout-{seed}")
    gate, test = [], []
    carry = 0.0  # spread the rounding over conventions so the total share stays close
    for convention in sorted(by_convention):
        group = by_convention[convention]
        rng.shuffle(group)
        want = len(group) * gate_share + carry
        k = int(want + 0.5)
        carry = want - k
        gate += group[:k]
        test += group[k:]
    if not gate or not test:
        raise SelftrainError("Splitting the held-out tasks left the gate or the test set empty; "
                             "use a corpus with more held-out tasks or another gate_share.")
    return sorted(gate, key=lambda t: t.task_id), sorted(test, key=lambda t: t.task_id)


def stream_rounds(train: list[Task], cycles: int, per_cycle: int, seed: int) -> list[list[Task]]:
    """The tasks users send before each cycle: the training split in a seeded order, taken
    in turn; past its end the stream starts over (users ask for the same things again)."""
    order = sorted(train, key=lambda t: t.task_id)
    random.Random(f"stream-{seed}").shuffle(order)
    per_cycle = per_cycle or max(1, len(order) // cycles)
    return [[order[(c * per_cycle + i) % len(order)] for i in range(per_cycle)] for c in range(cycles)]


def suite_of(name: str, tasks: list[Task]) -> Suite:
    digest = hashlib.sha256("\n".join(f"{t.task_id}\0{t.prompt}\0{t.tests}" for t in tasks).encode()).hexdigest()
    return Suite(name=name, problems=tuple(t.problem() for t in tasks), digest=digest)


def write_suite(path: Path, tasks: list[Task]) -> Path:
    """A JSONL evaluation suite (load_suite's format) of these tasks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"task_id": t.task_id, "prompt": t.prompt, "entry_point": t.entry_point,
                                        "tests": t.tests, "reference": t.reference, "category": t.convention}) + "\n"
                            for t in tasks), encoding="utf-8")
    return path


# --- the simulated user -------------------------------------------------------------------


@dataclass(frozen=True)
class Feedback:
    accepted: bool
    rating: int | None
    corrected_code: str | None

    def body(self) -> dict:
        out: dict = {"accepted": self.accepted}
        if self.rating is not None:
            out["rating"] = self.rating
        if self.corrected_code is not None:
            out["corrected_code"] = self.corrected_code
        return out


def user_feedback(task: Task, passed: bool, rng: random.Random, *, correction_share: float,
                  rating_share: float) -> Feedback:
    """What a user does with an answer they have tested: accept it when it passes; reject it
    when it fails and, on `correction_share` of failures, hand in the reference solution; on
    `rating_share` of answers, also rate it (4–5 passed, 1–2 failed)."""
    correct = not passed and rng.random() < correction_share
    rating = (rng.choice((4, 5)) if passed else rng.choice((1, 2))) if rng.random() < rating_share else None
    return Feedback(accepted=passed, rating=rating, corrected_code=task.reference if correct else None)


@dataclass
class RoundResult:
    cycle: int
    sent: int = 0
    passed: int = 0
    corrected: int = 0
    rated: int = 0
    model_version: str | None = None
    seconds: float = 0.0


class SimulatedUsers:
    """Users of the API: ask, test the answer, give feedback, all over HTTP."""

    def __init__(self, client, api_key: str, sandbox, config: SimulationConfig):
        self.client, self.sandbox, self.config = client, sandbox, config
        self.headers = {"Authorization": f"Bearer {api_key}"}

    def ask(self, task: Task) -> dict:
        response = self.client.post("/api/generate", headers=self.headers, json={
            "prompt": task.prompt, "tests": task.tests, "entry_point": task.entry_point})
        if response.status_code != 200:
            raise SelftrainError(f"The API refused task {task.task_id}: HTTP {response.status_code} {response.text[:300]}")
        return response.json()

    def send(self, cycle: int, tasks: list[Task], progress: Progress) -> RoundResult:
        from selftrain.evaluation.harness import score_answers

        started = time.perf_counter()
        result = RoundResult(cycle=cycle, sent=len(tasks))
        answers: list[dict] = [{}] * len(tasks)
        with ThreadPoolExecutor(self.config.concurrency) as pool:  # concurrent users: the engine batches
            for done, (index, answer) in enumerate(pool.map(lambda it: (it[0], self.ask(it[1])), enumerate(tasks)), 1):
                answers[index] = answer
                progress(f"cycle {cycle}: users ask", done, len(tasks))
        scored = score_answers(suite_of(f"stream-{cycle}", tasks), [[a["code"]] for a in answers], self.sandbox)
        for n, (task, answer, item) in enumerate(zip(tasks, answers, scored.items), 1):
            rng = random.Random(f"feedback-{self.config.seed}-{cycle}-{task.task_id}")
            feedback = user_feedback(task, item.passed, rng, correction_share=self.config.correction_share,
                                     rating_share=self.config.rating_share)
            response = self.client.post(f"/api/interactions/{answer['interaction_id']}/feedback",
                                        headers=self.headers, json=feedback.body())
            if response.status_code != 201:
                raise SelftrainError(f"The API refused feedback on interaction {answer['interaction_id']}: "
                                     f"HTTP {response.status_code} {response.text[:300]}")
            result.passed += item.passed
            result.corrected += feedback.corrected_code is not None
            result.rated += feedback.rating is not None
            result.model_version = answer["model_version"]
            progress(f"cycle {cycle}: users give feedback", n, len(tasks))
        result.seconds = round(time.perf_counter() - started, 1)
        return result


# --- measurement --------------------------------------------------------------------------


@dataclass
class Measurement:
    suite: str
    n: int
    passed: int
    pass_rate: float
    ci_low: float
    ci_high: float
    items: dict[str, bool]  # task id -> passed
    seconds: float

    def against(self, base: Measurement) -> dict:
        """Exact McNemar test and the difference, on the items both measured."""
        from selftrain.evaluation.stats import mcnemar_exact

        ids = [k for k in base.items if k in self.items]
        test = mcnemar_exact([base.items[k] for k in ids], [self.items[k] for k in ids])
        return {"difference": self.pass_rate - base.pass_rate, "base_only": test.b, "new_only": test.c,
                "mcnemar_p": test.p_value}


def measure(settings: Settings, version: tuple[str | None, str | None], suite: Suite, sandbox,
            progress: Progress, label: str) -> Measurement:
    from selftrain.evaluation.cache import evaluate_version
    from selftrain.evaluation.stats import proportion_ci
    from selftrain.models.base import resolve_base_model

    started = time.perf_counter()
    location = resolve_base_model(settings.base_model, settings.model_cache_dir, settings.allow_model_downloads)
    result = evaluate_version(settings, location, version[1], suite, sandbox,
                              progress=lambda stage, done, total: progress(f"{label}: {stage}", done, total))
    items = {i.task_id: bool(i.passed) for i in result.items}
    passed = sum(items.values())
    ci = proportion_ci(passed, len(items))
    return Measurement(suite.name, len(items), passed, passed / len(items), ci.low, ci.high, items,
                       round(time.perf_counter() - started, 1))


# --- the run ------------------------------------------------------------------------------


@dataclass
class CycleOutcome:
    cycle: int
    round: dict
    status: str
    deployed: bool
    version_id: str | None
    active_version: str | None
    n_examples: int
    train_steps: int
    gate_baseline: float | None
    gate_candidate: float | None
    gate_p: float | None
    gate_reasons: list[str]
    seconds: dict
    heldout: dict
    humaneval: dict | None


@dataclass
class SimulationReport:
    config: dict
    base_model: str
    n_stream_tasks: int
    n_gate_tasks: int
    n_test_tasks: int
    base: dict
    cycles: list[CycleOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


def simulate(settings: Settings, db: Database, config: SimulationConfig, out_dir: Path, *,
             progress: Progress | None = None, sandbox=None) -> SimulationReport:
    """Run the whole simulation in this workspace; the report goes to `out_dir`
    (simulation.json, simulation.md and simulation.png)."""
    from fastapi.testclient import TestClient

    from selftrain.agent import active_version_ref
    from selftrain.evaluation.suites import load_suite
    from selftrain.loop import make_sandbox, run_cycle
    from selftrain.serve.app import create_app
    from selftrain.serve.engine import GenerationEngine
    from selftrain.serve.keys import create_key

    config.check()
    progress = progress or (lambda stage, done, total: None)
    started = time.perf_counter()
    tasks = load_tasks(config.tasks_path)
    train = [t for t in tasks if t.split == "train"]
    gate_tasks, test_tasks = split_heldout([t for t in tasks if t.split == "heldout"], config.gate_share, config.seed)
    rounds = stream_rounds(train, config.cycles, config.tasks_per_cycle, config.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The gate judges the gate set; the loop already keeps its problems out of training.
    settings = replace(settings, eval_suite=str(write_suite(out_dir / "gate_suite.jsonl", gate_tasks)), eval_limit=0)
    test_suite = suite_of("acme-heldout-test", test_tasks)
    humaneval = None if config.humaneval_limit < 0 else load_suite("humaneval", config.humaneval_limit)
    sandbox = sandbox or make_sandbox(settings)

    def measure_all(version, label: str) -> tuple[Measurement, Measurement | None]:
        held = measure(settings, version, test_suite, sandbox, progress, f"{label}: held-out")
        he = measure(settings, version, humaneval, sandbox, progress, f"{label}: HumanEval") if humaneval else None
        return held, he

    base_version = active_version_ref(db)
    base_held, base_he = measure_all(base_version, "before cycle 1")
    report = SimulationReport(
        config={**asdict(config), "tasks_path": str(config.tasks_path)}, base_model=settings.base_model,
        n_stream_tasks=len(train), n_gate_tasks=len(gate_tasks), n_test_tasks=len(test_tasks),
        base={"version": base_version[0], "heldout": _summary(base_held), "humaneval": _summary(base_he)})
    measured = {base_version[0]: (base_held, base_he)}

    with db.session() as session:
        _, api_key = create_key(session, SIMULATED_USER, "user")
    engine = GenerationEngine(settings, db).start()
    try:
        with TestClient(create_app(settings, db, engine=engine)) as client:
            users = SimulatedUsers(client, api_key, sandbox, config)
            for cycle, stream in enumerate(rounds, start=1):
                round_result = users.send(cycle, stream, progress)
                cycle_report = run_cycle(settings, db, sandbox=sandbox,
                                         progress=lambda stage, d, t, c=cycle: progress(f"cycle {c}: {stage}", d, t))
                active = active_version_ref(db)
                _serve(engine, active[0])
                if active[0] not in measured:
                    measured[active[0]] = measure_all(active, f"after cycle {cycle}")
                held, he = measured[active[0]]
                gate = cycle_report.gate or {}
                report.cycles.append(CycleOutcome(
                    cycle=cycle, round=asdict(round_result), status=cycle_report.status,
                    deployed=cycle_report.deployed, version_id=cycle_report.version_id, active_version=active[0],
                    n_examples=cycle_report.n_examples, train_steps=cycle_report.train_steps,
                    gate_baseline=cycle_report.baseline_pass_rate, gate_candidate=cycle_report.candidate_pass_rate,
                    gate_p=gate.get("p_value"), gate_reasons=list(gate.get("reasons") or [cycle_report.message]),
                    seconds=cycle_report.seconds,
                    heldout={**_summary(held), **held.against(base_held)},
                    humaneval={**_summary(he), **he.against(base_he)} if he else None))
                report.seconds = round(time.perf_counter() - started, 1)
                write_report(report, out_dir)  # after every cycle, so a long run shows where it is
    finally:
        engine.stop()
    report.seconds = round(time.perf_counter() - started, 1)
    write_report(report, out_dir)
    return report


def _serve(engine, version_id: str | None, timeout_s: float = 300.0) -> None:
    """Wait until the engine serves `version_id` (it swaps in a background thread)."""
    deadline = time.monotonic() + timeout_s
    while engine.version_id != version_id:
        engine.refresh_version()
        if engine.load_error:
            raise SelftrainError(engine.load_error)
        if time.monotonic() > deadline:
            raise SelftrainError(f"The server did not switch to version {version_id or 'base'} "
                                 f"within {timeout_s:.0f} s.")
        time.sleep(0.2)


def _summary(m: Measurement | None) -> dict | None:
    if m is None:
        return None
    return {"n": m.n, "passed": m.passed, "pass_rate": m.pass_rate, "ci_low": m.ci_low,
            "ci_high": m.ci_high, "seconds": m.seconds}


# --- the report ---------------------------------------------------------------------------


def write_report(report: SimulationReport, out_dir: Path) -> None:
    data = report.to_json()
    _atomic_write(out_dir / "simulation.json", json.dumps(data, indent=2) + "\n")
    plot = plot_report(data, out_dir / "simulation.png")
    _atomic_write(out_dir / "simulation.md", markdown(data, plot.name if plot else None))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(s: dict | None) -> str:
    return "-" if not s else f"{_pct(s['pass_rate'])} [{_pct(s['ci_low'])}, {_pct(s['ci_high'])}]"


def _pts(s: dict | None) -> str:
    return "-" if not s else f"{100 * s['difference']:+.1f} pts"


def _p(x) -> str:
    return "-" if x is None else ("< 0.0001" if x < 1e-4 else f"{x:.3g}")


def markdown(data: dict, plot_name: str | None) -> str:
    base = data["base"]
    lines = [
        "# Simulation report", "",
        f"Base model: `{data['base_model']}`. Stream: {data['n_stream_tasks']} training tasks; held-out: "
        f"{data['n_gate_tasks']} gate tasks (what the deployment gate sees) and {data['n_test_tasks']} test "
        "tasks (measured only). pass@1 is greedy, with 95% Wilson intervals; p is the exact McNemar test "
        "against the base model on the same items.", "",
        f"Whole run: {data['seconds'] / 60:.1f} min.", "",
        "| after | users' pass rate | examples | steps | gate (baseline → candidate, p) | deployed | serving "
        "| held-out pass@1 | Δ vs base | p | HumanEval pass@1 | Δ vs base | p | train s | cycle s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| base | - | - | - | - | - | base | {_ci(base['heldout'])} | - | - | {_ci(base['humaneval'])} | - | - | - | - |",
    ]
    for c in data["cycles"]:
        r, h, he = c["round"], c["heldout"], c["humaneval"]
        gate = (f"{_pct(c['gate_baseline'])} → {_pct(c['gate_candidate'])}, p {_p(c['gate_p'])}"
                if c["gate_candidate"] is not None else c["status"])
        lines.append(
            f"| cycle {c['cycle']} | {r['passed']}/{r['sent']} | {c['n_examples']} | {c['train_steps']} | {gate} "
            f"| {'yes' if c['deployed'] else 'no'} | {c['active_version'] or 'base'} | {_ci(h)} "
            f"| {_pts(h)} | {_p(h['mcnemar_p'])} | {_ci(he)} | {_pts(he)} | {_p(he and he['mcnemar_p'])} "
            f"| {c['seconds'].get('train', '-')} | {sum(c['seconds'].values()):.0f} |")
    lines += ["", "Gate reasons:", ""]
    lines += [f"- cycle {c['cycle']}: {'; '.join(c['gate_reasons'])}" for c in data["cycles"]]
    if plot_name:
        lines += ["", f"![pass@1 per cycle]({plot_name})"]
    return "\n".join(lines) + "\n"


def plot_report(data: dict, path: Path) -> Path | None:
    """pass@1 per cycle with 95% intervals, held-out test set and HumanEval."""
    from selftrain.evaluation.report import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    points = [("base", data["base"])] + [(str(c["cycle"]), c) for c in data["cycles"]]
    for key, label, marker in (("heldout", "Acme held-out test", "o"), ("humaneval", "HumanEval", "s")):
        xs, ys, lo, hi = [], [], [], []
        for x, (_, entry) in enumerate(points):
            s = entry.get(key)
            if s:
                xs.append(x)
                ys.append(100 * s["pass_rate"])
                lo.append(100 * (s["pass_rate"] - s["ci_low"]))
                hi.append(100 * (s["ci_high"] - s["pass_rate"]))
        if xs:
            ax.errorbar(xs, ys, yerr=[lo, hi], marker=marker, capsize=4, label=label)
    ax.set_xticks(range(len(points)), [name if name == "base" else f"cycle {name}" for name, _ in points])
    ax.set_ylabel("pass@1 (%)")
    ax.set_ylim(bottom=0)
    ax.set_title("The model in service, after each cycle")
    ax.legend()
    return _save(fig, path)

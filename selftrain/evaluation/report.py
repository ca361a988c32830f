"""Evaluation reports: a JSON record, a readable Markdown or HTML page, and PNG plots.

`store_run` adds an evaluation_runs row; `load_history` reads what the store knows about
earlier runs and training (evaluation_runs, training_metrics, model_versions); `write_report`
turns one run plus that history into files. The page is assembled once as a list of blocks
(heading, paragraph, table, image) and rendered to either format, so both say the same.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from selftrain.evaluation.harness import SuiteResult
from selftrain.evaluation.stats import Interval, learning_curve, proportion_ci
from selftrain.evaluation.suites import PROMPT_STYLES, Suite
from selftrain.store.schema import EvaluationRun, ModelVersion, TrainingMetric

FORMATS = ("md", "html")
_FAILURES_SHOWN = 25


@dataclass
class History:
    """What the store knows beyond the run being reported."""

    # latest comparable run per version, oldest version first: (label, pass rate, n tested)
    pass_rates: list[tuple[str, float, int]] = field(default_factory=list)
    # training steps per run id: [(step, loss, eval_loss)]
    losses: dict[str, list[tuple[int, float | None, float | None]]] = field(default_factory=dict)
    # one entry per registered version, oldest first, as stats.learning_curve reads them
    sessions: list[dict] = field(default_factory=list)


def store_run(session: Session, result: SuiteResult, suite: Suite, *, model_version: str | None,
              extra: dict | None = None) -> int:
    """Add the evaluation_runs row for `result` and return its id. model_version None = base model."""
    tested = result.tested
    ci = proportion_ci(sum(i.passed for i in tested), len(tested))
    row = EvaluationRun(model_version=model_version, suite=suite.name, n_items=len(result.items),
                        metrics=_json_safe({**result.metrics(), "suite_digest": suite.digest,
                                            "pass_rate_ci": [ci.low, ci.high], **(extra or {})}),
                        items=_json_safe(result.to_json()))
    session.add(row)
    session.flush()
    return row.id


def load_history(session: Session, suite: str, *, prompt_style: str, temperature: float) -> History:
    """Pass rates of every version on `suite` (runs with the same prompt style and temperature
    only, the latest per version), loss curves of every training run, and per-version training
    sessions for the learning curve."""
    versions = list(session.scalars(select(ModelVersion).order_by(ModelVersion.created_at, ModelVersion.id)))
    order = {None: -1, **{v.id: n for n, v in enumerate(versions)}}
    latest: dict[str | None, EvaluationRun] = {}
    for run in session.scalars(select(EvaluationRun).where(EvaluationRun.suite == suite).order_by(EvaluationRun.id)):
        m = run.metrics or {}
        if m.get("prompt_style", "request") == prompt_style and float(m.get("temperature", 0.0)) == temperature:
            latest[run.model_version] = run
    history = History()
    for version in sorted(latest, key=lambda v: (order.get(v, len(order)), v or "")):
        m = latest[version].metrics or {}
        history.pass_rates.append((version or "base", float(m.get("pass_rate", 0.0)),
                                   int(m.get("n_tested", latest[version].n_items))))
    for metric in session.scalars(select(TrainingMetric).order_by(TrainingMetric.id)):
        history.losses.setdefault(metric.run_id, []).append((metric.step, metric.loss, metric.eval_loss))
    history.sessions = [{"version": v.id, "train_loss": (v.metrics or {}).get("train_loss"),
                         "eval_loss": (v.metrics or {}).get("eval_loss"),
                         "performance": (v.metrics or {}).get("pass_rate")} for v in versions]
    return history


def write_report(out_dir: Path, result: SuiteResult, suite: Suite, history: History, *, model: str,
                 run_id: int | None, fmt: str = "md", details: dict | None = None) -> dict[str, Path]:
    """Write report.json, report.<fmt> and the PNG plots into out_dir; returns their paths."""
    if fmt not in FORMATS:
        raise ValueError(f"report format must be one of {FORMATS}, got {fmt!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tested = result.tested
    ci = proportion_ci(sum(i.passed for i in tested), len(tested))
    curve = learning_curve(history.sessions)
    paths = {"json": out_dir / "report.json", "report": out_dir / f"report.{fmt}"}
    if plot := plot_pass_rates(history, out_dir / "pass_rate_by_version.png", suite.name):
        paths["pass_rate_plot"] = plot
    if plot := plot_losses(history, out_dir / "loss_curves.png"):
        paths["loss_plot"] = plot
    record = {"run_id": run_id, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "model": model, "suite": {"name": suite.name, "digest": suite.digest, "n": len(suite.problems),
                                        "prompt_style": suite.prompt_style},
              "details": details or {}, "metrics": result.metrics(),
              "pass_rate_ci": asdict(ci), "learning_curve": curve,
              "history": {"pass_rates": history.pass_rates, "sessions": history.sessions},
              "items": result.to_json()}
    paths["json"].write_text(json.dumps(_json_safe(record), indent=2), encoding="utf-8")
    blocks = _page(result, suite, history, ci, curve, model=model, run_id=run_id, details=details or {},
                   plots={k: p.name for k, p in paths.items() if k.endswith("_plot")})
    paths["report"].write_text(_markdown(blocks) if fmt == "md" else _html(blocks, title=blocks[0][1]),
                               encoding="utf-8")
    return paths


# --- plots --------------------------------------------------------------------------


def plot_pass_rates(history: History, path: Path, suite: str) -> Path | None:
    """Bars of pass rate per version with 95% Wilson intervals; None when there is nothing to plot."""
    if not history.pass_rates:
        return None
    plt = _pyplot()
    labels = [label for label, _, _ in history.pass_rates]
    rates = [rate for _, rate, _ in history.pass_rates]
    intervals = [proportion_ci(round(rate * n), n) for _, rate, n in history.pass_rates]
    errors = [[r - ci.low for r, ci in zip(rates, intervals)], [ci.high - r for r, ci in zip(rates, intervals)]]
    fig, ax = plt.subplots(figsize=(max(4.5, 0.8 * len(labels) + 2), 3.6))
    ax.bar(labels, [100 * r for r in rates], width=0.6, color="#4c78a8",
           yerr=[[100 * e for e in side] for side in errors], capsize=4, error_kw={"elinewidth": 1})
    ax.set_ylabel("pass rate (%)")
    ax.set_title(f"{suite}: pass rate by version\n(error bars: 95% Wilson interval)", fontsize=10)
    ax.set_ylim(0, min(100, max(100 * ci.high for ci in intervals) * 1.2 + 1))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_losses(history: History, path: Path, most: int = 6) -> Path | None:
    """Training loss (lines) and eval loss (dots) against step for the `most` latest runs."""
    runs = [(run, points) for run, points in history.losses.items()
            if any(loss is not None or ev is not None for _, loss, ev in points)][-most:]
    if not runs:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for n, (run, points) in enumerate(runs):
        color = f"C{n % 10}"
        train = [(s, v) for s, v, _ in points if v is not None]
        evals = [(s, v) for s, _, v in points if v is not None]
        if train:
            ax.plot(*zip(*train), color=color, label=f"{run} train")
        if evals:
            ax.plot(*zip(*evals), "o--", color=color, markersize=4, label=f"{run} eval")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Training and eval loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clear()
    _pyplot().close(fig)
    return path


# --- the page -----------------------------------------------------------------------


def _page(result: SuiteResult, suite: Suite, history: History, ci: Interval, curve: dict, *, model: str,
          run_id: int | None, details: dict, plots: dict[str, str]) -> list[tuple]:
    m = result.metrics()
    tested = result.tested
    blocks: list[tuple] = [("h1", f"Evaluation of {model} on {suite.name}")]
    sampling = (f"{m['samples_per_item']} samples per problem at temperature {result.temperature:g}"
                if result.temperature > 0 else "greedy decoding, one answer per problem")
    blocks.append(("p", f"Run {run_id if run_id is not None else '(not stored)'}: {len(result.items)} problems "
                        f"({len(tested)} with tests), prompt style `{suite.prompt_style}`, {sampling}. "
                        f"{PROMPT_STYLES[suite.prompt_style]} Suite digest `{suite.digest[:16]}`."))
    if details:
        blocks.append(("p", "Settings: " + ", ".join(f"{k} = {v}" for k, v in details.items()) + "."))
    rows = [["pass@1" if result.temperature <= 0 else "pass rate (first sample)",
             f"{_pct(m['pass_rate'])} ({sum(i.passed for i in tested)}/{len(tested)}), "
             f"95% CI [{_pct(ci.low)}, {_pct(ci.high)}]"]]
    rows += [[f"pass@{k} (unbiased)", _pct(v)] for k, v in m["pass_at_k"].items() if result.temperature > 0]
    rows += [["syntax valid", _pct(m["syntax_rate"])], ["program ran (before its tests)", _pct(m["execution_rate"])],
             ["cyclomatic complexity (mean of worst block)", _num(m["cyclomatic_complexity"], 2)],
             ["maintainability index (mean, 0-100)", _num(m["maintainability_index"], 1)],
             ["BLEU-4 vs reference (mean)", f"{_num(m['bleu'], 3)} over {m['n_bleu']} items"],
             ["estimated time complexity", _counts(m["time_complexity"])],
             ["estimated space complexity", _counts(m["space_complexity"])],
             ["sandbox outcomes", _counts(m["status"])]]
    blocks += [("h2", "Results"), ("table", ["metric", "value"], rows)]
    if len(m["by_category"]) > 1:
        rows = [[c, str(v["n"]), _pct(v["pass_rate"])] for c, v in m["by_category"].items()]
        blocks += [("h2", "By category"), ("table", ["category", "problems", "pass rate"], rows)]
    blocks.append(("h2", "Pass rate by version"))
    if "pass_rate_plot" in plots:
        blocks += [("img", plots["pass_rate_plot"], "pass rate by version"),
                   ("table", ["version", "pass rate", "problems"],
                    [[v, _pct(r), str(n)] for v, r, n in history.pass_rates])]
    else:
        blocks.append(("p", "No stored runs to compare yet."))
    blocks.append(("h2", "Training"))
    if "loss_plot" in plots:
        blocks.append(("img", plots["loss_plot"], "loss curves"))
    else:
        blocks.append(("p", "No training steps are stored yet."))
    blocks += [("h2", "Learning curve"), ("p", _read_curve(curve))]
    if history.sessions:
        blocks.append(("table", ["version", "train loss", "eval loss", "pass rate (its gate suite)"],
                       [[s["version"], _num(s["train_loss"], 4), _num(s["eval_loss"], 4), _pct(s["performance"])]
                        for s in history.sessions]))
    failed = [i for i in tested if not i.passed]
    blocks.append(("h2", f"Failures ({len(failed)})"))
    if failed:
        shown = failed[:_FAILURES_SHOWN]
        blocks.append(("table", ["task", "outcome", "last line of the error"],
                       [[i.task_id, i.status, i.error or "-"] for i in shown]))
        if len(failed) > len(shown):
            blocks.append(("p", f"... and {len(failed) - len(shown)} more in report.json."))
    return blocks


def _read_curve(curve: dict) -> str:
    """stats.learning_curve's numbers in words."""
    n = curve["total_sessions"]
    if n == 0:
        return "No version has been trained yet, so there is no learning curve."
    parts = [f"{n} training session{'s' if n != 1 else ''}."]
    if curve["current_train_loss"] is not None:
        parts.append(f"Latest train loss {curve['current_train_loss']:.4f}, eval loss "
                     f"{_num(curve['current_eval_loss'], 4)}; train loss changes by {curve['loss_slope']:+.4f} "
                     "per session (least-squares slope).")
    if curve["current_train_loss"] is not None and curve["current_eval_loss"] is not None:
        gap = curve["overfitting_indicator"]
        parts.append(f"Eval minus train loss over the last sessions: {gap:+.4f}"
                     + (" — eval loss sits well above train loss, a sign of overfitting." if gap > 0.1 else "."))
    if curve["best_performance"] is not None:
        parts.append(f"Gate pass rate trend {100 * curve['performance_trend']:+.2f} points per session; "
                     f"best {_pct(curve['best_performance'])}.")
    return " ".join(parts)


def _markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *args in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + args[0])
        elif kind == "p":
            out.append(args[0])
        elif kind == "img":
            out.append(f"![{args[1]}]({args[0]})")
        elif kind == "table":
            header, rows = args
            cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            out.append("\n".join(["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
                                 + ["| " + " | ".join(map(cell, row)) + " |" for row in rows]))
    return "\n\n".join(out) + "\n"


def _html(blocks: list[tuple], title: str) -> str:
    e = html.escape
    body = []
    for kind, *args in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{e(args[0])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{e(args[0])}</p>")
        elif kind == "img":
            body.append(f'<p><img src="{e(args[0])}" alt="{e(args[1])}"></p>')
        elif kind == "table":
            header, rows = args
            body.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
                        + "</table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
             "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;"
             "text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _counts(counter: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: -kv[1])) or "-"


def _json_safe(value):
    """NaN and infinities become None: JSON (and PostgreSQL's JSON type) has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value

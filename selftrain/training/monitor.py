"""Watching a training run step by step: anomaly alerts, a run summary, and optional
passthrough of the per-step metrics to TensorBoard or MLflow.

The alerts are the spec's (`TrainingMonitor.check_training_anomalies`), made precise:
- `loss_explosion`: the step's loss is over 2× the mean of the 10 steps before it;
- `loss_plateau`: the variance of the last 10 losses is under 1e-6;
- `nan_loss`: the loss is NaN or infinite; the recipe then stops without saving.
A condition that persists is reported once when it starts, not at every step, and
again only after it has cleared (otherwise a plateau would fill the alerts table).
Alerts go to an `on_alert(kind, message, step)` callback; the loop stores them.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable

WINDOW = 10
EXPLOSION_FACTOR = 2.0
PLATEAU_VARIANCE = 1e-6

AlertCallback = Callable[[str, str, int], None]


class TrainingMonitor:
    """Feed it every step's record ({"step", "loss", ...}); it keeps the history, raises
    alerts and summarises the run."""

    def __init__(self, on_alert: AlertCallback | None = None, reporter=None):
        self.on_alert = on_alert
        self.reporter = reporter
        self.losses: list[float] = []
        self.alerts: list[dict] = []
        self._active: set[str] = set()  # conditions alerted and not yet cleared
        self.started = time.perf_counter()
        self.elapsed_before = 0.0  # time spent before a resume

    def log_step(self, record: dict) -> list[dict]:
        """Record one step; returns the alerts it raised."""
        step, loss = record["step"], record.get("loss")
        raised = []
        if self.reporter is not None:
            self.reporter.log(record)
        if loss is None:
            return raised
        if not math.isfinite(loss):
            raised.append(self._alert("nan_loss", f"Training loss became {loss} at step {step}; "
                                      "the run stops and no adapter is saved.", step))
            return raised
        previous = self.losses[-WINDOW:]
        self.losses.append(loss)
        if len(previous) == WINDOW:
            mean = sum(previous) / WINDOW
            if loss > EXPLOSION_FACTOR * mean:
                if "loss_explosion" not in self._active:
                    raised.append(self._alert("loss_explosion", f"Loss exploded at step {step}: {loss:.4g} "
                                              f"is over {EXPLOSION_FACTOR:g}× the mean of the previous "
                                              f"{WINDOW} steps ({mean:.4g}).", step))
                    self._active.add("loss_explosion")
            else:
                self._active.discard("loss_explosion")
        recent = self.losses[-WINDOW:]
        if len(recent) == WINDOW:
            variance = statistics.pvariance(recent)
            if variance < PLATEAU_VARIANCE:
                if "loss_plateau" not in self._active:
                    raised.append(self._alert("loss_plateau", f"Loss plateaued at step {step}: the variance "
                                              f"of the last {WINDOW} losses is {variance:.2g} "
                                              f"(< {PLATEAU_VARIANCE:g}).", step))
                    self._active.add("loss_plateau")
            else:
                self._active.discard("loss_plateau")
        return raised

    def _alert(self, kind: str, message: str, step: int) -> dict:
        alert = {"kind": kind, "message": message, "step": step}
        self.alerts.append(alert)
        if self.on_alert is not None:
            self.on_alert(kind, message, step)
        return alert

    def summary(self) -> dict:
        """The spec's run summary: initial, final and minimum loss, relative reduction,
        seconds and alert count."""
        losses = self.losses
        initial = losses[0] if losses else None
        final = losses[-1] if losses else None
        reduction = (initial - final) / initial if losses and initial else None
        return {"steps": len(losses), "initial_loss": initial, "final_loss": final,
                "min_loss": min(losses) if losses else None, "loss_reduction": reduction,
                "seconds": self.elapsed_before + time.perf_counter() - self.started,
                "alerts": len(self.alerts)}

    def state_dict(self) -> dict:
        return {"losses": list(self.losses), "alerts": list(self.alerts), "active": sorted(self._active),
                "elapsed": self.elapsed_before + time.perf_counter() - self.started}

    def load_state_dict(self, state: dict) -> None:
        self.losses = list(state["losses"])
        self.alerts = list(state["alerts"])
        self._active = set(state["active"])
        self.elapsed_before = state["elapsed"]
        self.started = time.perf_counter()

    def close(self) -> None:
        if self.reporter is not None:
            self.reporter.close()


REPORT_TARGETS = ("none", "tensorboard", "mlflow")


class Reporter:
    """Per-step metrics to TensorBoard (a `tensorboard` log folder) or to the active MLflow
    run. Neither is a dependency of selftrain: `open_reporter` says how to install them."""

    def __init__(self, target: str, log_dir):
        self.target = target
        if target == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir))
        else:
            import mlflow

            self.mlflow = mlflow

    def log(self, record: dict) -> None:
        metrics = {k: float(v) for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}
        if self.target == "tensorboard":
            for name, value in metrics.items():
                self.writer.add_scalar(f"train/{name}", value, record["step"])
        else:
            self.mlflow.log_metrics(metrics, step=record["step"])

    def close(self) -> None:
        if self.target == "tensorboard":
            self.writer.close()


def check_report_to(target: str) -> None:
    """Refuse an unknown target, or one whose package is missing, in one sentence."""
    from selftrain.errors import SelftrainError

    if target not in REPORT_TARGETS:
        raise SelftrainError(f"Setting 'report_to' must be one of {', '.join(REPORT_TARGETS)}, got {target!r}.")
    if target == "none":
        return
    try:
        __import__(target)
    except ImportError:
        raise SelftrainError(f"report_to = '{target}' needs the {target} package, which is not "
                             f"installed: run `pip install {target}` or set report_to = 'none'.") from None


def open_reporter(target: str, log_dir) -> Reporter | None:
    """A Reporter for `target`, None for "none"."""
    check_report_to(target)
    return None if target == "none" else Reporter(target, log_dir)

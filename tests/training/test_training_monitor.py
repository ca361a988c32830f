import math
import sys
import types

import pytest

from selftrain.errors import SelftrainError
from selftrain.training.monitor import TrainingMonitor, open_reporter


def feed(monitor, losses):
    raised = []
    for step, loss in enumerate(losses, start=1):
        raised += monitor.log_step({"step": step, "loss": loss})
    return raised


def test_explosion_is_over_twice_the_mean_of_the_previous_ten():
    seen = []
    monitor = TrainingMonitor(on_alert=lambda kind, message, step: seen.append((kind, step)))
    losses = [1.0, 1.2] * 5 + [2.19, 2.21, 5.0, 1.0, 9.0]
    raised = feed(monitor, losses)
    assert losses[10] < 2 * sum(losses[0:10]) / 10  # step 11: just under the threshold
    assert losses[11] < 2 * sum(losses[1:11]) / 10  # step 12: the window now holds step 11
    assert [(a["kind"], a["step"]) for a in raised] == [("loss_explosion", 13), ("loss_explosion", 15)]
    assert seen == [("loss_explosion", 13), ("loss_explosion", 15)]  # step 14 cleared it
    assert "over 2× the mean of the previous 10 steps" in raised[0]["message"]


def test_no_alert_before_ten_steps_of_history():
    assert feed(TrainingMonitor(), [1.0, 100.0, 1.0, 1000.0]) == []


def test_plateau_is_reported_once_until_it_clears():
    monitor = TrainingMonitor()
    raised = feed(monitor, [0.5] * 15 + [0.9, 0.1] + [0.3] * 10)
    assert [(a["kind"], a["step"]) for a in raised] == [("loss_plateau", 10), ("loss_plateau", 27)]


def test_nan_loss_alert_and_summary():
    monitor = TrainingMonitor()
    feed(monitor, [4.0, 3.0, 1.0, 2.0])
    (alert,) = monitor.log_step({"step": 5, "loss": math.nan})
    assert alert["kind"] == "nan_loss" and "step 5" in alert["message"]
    summary = monitor.summary()
    assert summary["initial_loss"] == 4.0 and summary["final_loss"] == 2.0 and summary["min_loss"] == 1.0
    assert summary["loss_reduction"] == pytest.approx(0.5) and summary["alerts"] == 1
    assert summary["steps"] == 4 and summary["seconds"] >= 0


def test_state_survives_a_resume():
    first = TrainingMonitor()
    feed(first, [0.5] * 10)
    second = TrainingMonitor()
    second.load_state_dict(first.state_dict())
    assert second.log_step({"step": 11, "loss": 0.5}) == []  # the plateau was already reported
    assert second.summary()["alerts"] == 1 and second.summary()["steps"] == 11


def test_report_to_a_missing_package_is_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(SelftrainError, match="needs the mlflow package, which is not installed"):
        open_reporter("mlflow", "/tmp/unused")
    with pytest.raises(SelftrainError, match="must be one of none, tensorboard, mlflow"):
        open_reporter("wandb", "/tmp/unused")
    assert open_reporter("none", "/tmp/unused") is None


def test_report_to_mlflow_passes_every_step_through(monkeypatch):
    logged = []
    fake = types.ModuleType("mlflow")
    fake.log_metrics = lambda metrics, step: logged.append((step, metrics))
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monitor = TrainingMonitor(reporter=open_reporter("mlflow", "/tmp/unused"))
    monitor.log_step({"step": 1, "loss": 2.5, "learning_rate": 1e-4, "eval_loss": math.nan})
    assert logged == [(1, {"loss": 2.5, "learning_rate": 1e-4})]

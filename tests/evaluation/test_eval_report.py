"""Tests for selftrain.evaluation.report: stored runs, history, and the written report."""

import json

import pytest

from selftrain.evaluation.harness import ItemResult, SuiteResult
from selftrain.evaluation.report import load_history, store_run, write_report
from selftrain.evaluation.stats import learning_curve
from selftrain.evaluation.suites import load_suite
from selftrain.store.db import Database
from selftrain.store.schema import EvaluationRun, ModelVersion, TrainingMetric

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'selftrain.db'}")
    with database.session() as session:
        for n, (train, evl, rate) in enumerate([(1.2, 1.4, 0.10), (0.9, 1.2, 0.15), (0.7, 1.1, 0.20)], start=1):
            session.add(ModelVersion(id=f"v000{n}", base_model="tiny", adapter_path=f"/x/v000{n}",
                                     metrics={"train_loss": train, "eval_loss": evl, "pass_rate": rate}))
            session.flush()
        for step, loss in enumerate([2.0, 1.5, 1.2], start=1):
            session.add(TrainingMetric(run_id="cycle-1", step=step, loss=loss, eval_loss=1.4 if step == 3 else None))
        session.add(TrainingMetric(run_id="cycle-2", step=1, loss=1.1, eval_loss=1.2))
        demo = {"prompt_style": "request", "temperature": 0.0}
        session.add(EvaluationRun(model_version=None, suite="demo", n_items=40, metrics={**demo, "pass_rate": 0.1,
                                                                                         "n_tested": 40}))
        session.add(EvaluationRun(model_version="v0002", suite="demo", n_items=40, metrics={"pass_rate": 0.3}))
        session.add(EvaluationRun(model_version="v0002", suite="demo", n_items=40, metrics={**demo, "pass_rate": 0.2,
                                                                                            "n_tested": 40}))
        # not comparable: another prompt style, another temperature, another suite
        session.add(EvaluationRun(model_version="v0001", suite="demo", n_items=40,
                                  metrics={"prompt_style": "signature_chat", "pass_rate": 0.9}))
        session.add(EvaluationRun(model_version="v0003", suite="demo", n_items=40,
                                  metrics={**demo, "temperature": 0.8, "pass_rate": 0.9}))
        session.add(EvaluationRun(model_version="v0003", suite="humaneval", n_items=164, metrics={"pass_rate": 0.9}))
    yield database
    database.close()


def result_of(passed: list[bool]) -> SuiteResult:
    items = tuple(ItemResult(f"eval-{n:03d}", ok, True, "passed" if ok else "failed", "def f():\n    return 1",
                             solution_ran=True, cyclomatic_complexity=1, maintainability_index=90.0,
                             time_complexity="O(1)", space_complexity="O(1)", bleu=0.5,
                             error="" if ok else "AssertionError", category="math" if n % 2 else "strings")
                  for n, ok in enumerate(passed, start=1))
    return SuiteResult(items, suite="demo", prompt_style="request")


def test_store_run_and_history(db):
    suite = load_suite("demo", limit=4)
    with db.session() as session:
        run_id = store_run(session, result_of([True, False, True, False]), suite, model_version="v0003",
                           extra={"details": {"seed": 0}})
        history = load_history(session, "demo", prompt_style="request", temperature=0.0)
        row = session.get(EvaluationRun, run_id)
    assert (row.model_version, row.suite, row.n_items) == ("v0003", "demo", 4)
    assert row.metrics["pass_rate"] == 0.5 and row.metrics["suite_digest"] == suite.digest
    assert row.metrics["details"] == {"seed": 0} and len(row.metrics["pass_rate_ci"]) == 2
    assert [i["task_id"] for i in row.items] == ["eval-001", "eval-002", "eval-003", "eval-004"]
    # base first, then versions in creation order; the latest comparable run of each
    assert history.pass_rates == [("base", 0.1, 40), ("v0002", 0.2, 40), ("v0003", 0.5, 4)]
    assert history.losses == {"cycle-1": [(1, 2.0, None), (2, 1.5, None), (3, 1.2, 1.4)], "cycle-2": [(1, 1.1, 1.2)]}
    assert [s["version"] for s in history.sessions] == ["v0001", "v0002", "v0003"]
    assert history.sessions[0] == {"version": "v0001", "train_loss": 1.2, "eval_loss": 1.4, "performance": 0.1}


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_write_report(db, tmp_path, fmt):
    suite = load_suite("demo", limit=4)
    result = result_of([True, False, False, False])
    with db.session() as session:
        run_id = store_run(session, result, suite, model_version=None)
        history = load_history(session, "demo", prompt_style="request", temperature=0.0)
    paths = write_report(tmp_path / "out", result, suite, history, model="base model", run_id=run_id, fmt=fmt,
                         details={"max_new_tokens": 16})
    assert set(paths) == {"json", "report", "pass_rate_plot", "loss_plot"}
    for name in ("pass_rate_plot", "loss_plot"):
        assert paths[name].read_bytes()[:8] == PNG
    record = json.loads(paths["json"].read_text())
    assert record["run_id"] == run_id and record["metrics"]["pass_rate"] == 0.25
    assert record["learning_curve"] == pytest.approx(learning_curve(history.sessions))
    assert record["pass_rate_ci"]["low"] < 0.25 < record["pass_rate_ci"]["high"]
    page = paths["report"].read_text()
    for text in ("Evaluation of base model on demo", "pass@1", "25.0% (1/4), 95% CI", "Learning curve",
                 "3 training sessions", "eval-002", "AssertionError", "pass_rate_by_version.png", "loss_curves.png",
                 "max_new_tokens = 16", "strings"):
        assert text in page, text
    if fmt == "html":
        assert page.startswith("<!doctype html>") and "<table>" in page and '<img src="loss_curves.png"' in page
    else:
        assert "| metric | value |" in page and "![pass rate by version](pass_rate_by_version.png)" in page


def test_report_without_history(tmp_path):
    from selftrain.evaluation.report import History

    suite = load_suite("demo", limit=2)
    paths = write_report(tmp_path, result_of([False, False]), suite, History(), model="base model", run_id=None)
    assert set(paths) == {"json", "report"}
    page = paths["report"].read_text()
    assert "No stored runs to compare yet." in page and "no learning curve" in page
    with pytest.raises(ValueError):
        write_report(tmp_path, result_of([True]), suite, History(), model="m", run_id=None, fmt="pdf")

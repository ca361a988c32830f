"""Post-deploy watch: live feedback on a new version against the version it replaced;
significantly worse → automatic rollback and an alert."""

from datetime import timedelta
from math import comb

import pytest
from sqlalchemy import select

from selftrain.config import Settings
from selftrain.registry import activate, active_version, latest_deployment
from selftrain.store.records import record_feedback, record_interaction
from selftrain.store.schema import Alert, utcnow
from selftrain.watch import FeedbackSample, fisher_exact_worse, judge, watch_deployment

from .conftest import add_version


def test_fisher_exact_worse_matches_hand_computed_values():
    # New 0/10 accepted vs old 10/10: the only table this extreme; p = 1 / C(20, 10).
    assert fisher_exact_worse(10, 0, 0, 10) == pytest.approx(1 / comb(20, 10))
    # New 1/3 vs old 3/3 (margins: 4 accepted, 2 rejected, 3 per side):
    # P(new accepts <= 1) = C(4,1)C(2,2)/C(6,3) = 4/20 (it cannot accept 0).
    assert fisher_exact_worse(3, 0, 1, 2) == pytest.approx(0.2)
    assert fisher_exact_worse(0, 10, 10, 0) == pytest.approx(1.0)  # new better: no evidence it is worse
    assert fisher_exact_worse(0, 0, 3, 3) == 1.0


def test_judge_needs_enough_feedback_and_a_significant_drop():
    old = FeedbackSample(20, accepted=16, rejected=4, ratings=(5, 4) * 10)
    same = FeedbackSample(20, accepted=15, rejected=5, ratings=(4, 5) * 10)
    worse = FeedbackSample(20, accepted=5, rejected=15, ratings=(2, 3) * 10)
    assert judge(old, same, 0.05)[0] is False
    bad, tests, reasons = judge(old, worse, 0.05)
    assert bad and tests["acceptance_p"] < 0.025 and tests["rating_p"] < 0.025
    assert reasons[0].startswith("acceptance 25% vs 80% (Fisher exact one-sided p = ")
    few = FeedbackSample(5, accepted=0, rejected=5)
    assert judge(old, few, 0.05) == (False, {}, [
        "too little feedback to compare (each side needs 10 votes or ratings)"])


def answers(db, version, n_accepted, n_rejected, *, when=None):
    with db.session() as s:
        for i in range(n_accepted + n_rejected):
            row = record_interaction(s, prompt=f"p{i}", code="x = 1", model_version=version)
            if when is not None:
                row.created_at = when
            record_feedback(s, row.id, accepted=i < n_accepted, rating=5 if i < n_accepted else 1)


@pytest.mark.parametrize("new_accepted, verdict", [(4, "rolled_back"), (8, "kept")])
def test_a_worse_deployment_is_rolled_back_with_an_alert(db, tmp_path, new_accepted, verdict):
    settings = Settings(workspace=tmp_path)  # watch_window 50 by default; read with getattr
    settings.watch_window = 20
    v1, v2 = add_version(db, tmp_path), add_version(db, tmp_path)
    with db.session() as s:
        activate(s, v1)
    answers(db, v1, 16, 4, when=utcnow() - timedelta(hours=1))  # 80% accepted before the switch
    with db.session() as s:
        activate(s, v2, reason="cycle")
    answers(db, v2, new_accepted, 10 - new_accepted)
    progress = watch_deployment(settings, db)
    assert progress.status == "watching" and progress.new["answers"] == 10
    answers(db, v2, new_accepted, 10 - new_accepted)
    result = watch_deployment(settings, db)
    assert result.status == verdict and result.previous == v1
    with db.session() as s:
        alerts = s.scalars(select(Alert)).all()
        deployment = s.get(type(latest_deployment(s)), result.deployment_id)
        assert deployment.watch_status == verdict and deployment.watch_report["tests"]
        if verdict == "rolled_back":
            assert active_version(s).id == v1
            assert latest_deployment(s).reason == "auto_rollback"
            (alert,) = alerts
            assert alert.kind == "auto_rollback" and alert.message.startswith(
                f"Version {v2} was rolled back to {v1} after deployment: acceptance 40% vs 80%")
        else:
            assert active_version(s).id == v2 and alerts == []
    assert watch_deployment(settings, db) is None  # judged once; nothing is being watched now


def test_rolling_back_to_the_base_model_when_it_served_before(db, tmp_path):
    settings = Settings(workspace=tmp_path)
    settings.watch_window = 10
    answers(db, None, 9, 1, when=utcnow() - timedelta(hours=1))  # the base model's answers
    v1 = add_version(db, tmp_path)
    with db.session() as s:
        activate(s, v1, reason="cycle")
    answers(db, v1, 1, 9)
    result = watch_deployment(settings, db)
    assert result.status == "rolled_back" and result.restored is None
    with db.session() as s:
        assert active_version(s) is None

"""Post-deploy watch: is a newly deployed version worse with real users than the one it
replaced? If so, roll back and raise an alert.

Every answer is stored with the version that gave it (`interactions.model_version`), so
after an activation the feedback on the new version's answers can be set against the
feedback on the previous version's last answers before it. Once `watch_window` answers of
the new version carry feedback, two one-sided tests ask whether it is worse:
- acceptance rate: Fisher's exact test on the 2×2 table of accepted/rejected answers
  (Fisher 1922; exact, so small windows are fine);
- ratings (1–5): Welch's t-test (`evaluation.stats.independent_t_test`), halving its
  two-sided p-value in the direction of "worse".
Each test runs at `watch_alpha / 2` (Bonferroni over the two), and either one being
significant rolls back. Not worse: the version is kept and the watch ends. A metric is
tested only when each side has at least MIN_SAMPLES values for it.

Only activations by a cycle or a person are watched; rollbacks are not (a rollback
restores something already judged, and watching it could flap).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sqlalchemy import select

from selftrain.config import Settings
from selftrain.store.db import Database
from selftrain.store.deployments import Deployment
from selftrain.store.records import summarize_feedback
from selftrain.store.schema import Alert, Feedback, Interaction, utcnow

MIN_SAMPLES = 10  # fewer values than this on either side: that metric is not tested


def fisher_exact_worse(old_accepted: int, old_rejected: int, new_accepted: int, new_rejected: int) -> float:
    """One-sided Fisher exact p-value for "the new acceptance rate is lower than the old".

    The 2×2 table [[new_accepted, new_rejected], [old_accepted, old_rejected]] with the
    alternative that its odds ratio is < 1 (scipy.stats.fisher_exact, alternative='less');
    that is the hypergeometric probability of the new version getting at most
    `new_accepted` acceptances given the margins. 1.0 when either side has no votes.
    """
    from scipy import stats

    if min(old_accepted + old_rejected, new_accepted + new_rejected) == 0:
        return 1.0
    table = [[new_accepted, new_rejected], [old_accepted, old_rejected]]
    return float(stats.fisher_exact(table, alternative="less").pvalue)


@dataclass(frozen=True)
class FeedbackSample:
    """Feedback on one version's answers: accept/reject votes and ratings."""

    answers: int = 0
    accepted: int = 0
    rejected: int = 0
    ratings: tuple[int, ...] = ()

    @property
    def acceptance_rate(self) -> float | None:
        votes = self.accepted + self.rejected
        return self.accepted / votes if votes else None

    @property
    def mean_rating(self) -> float | None:
        return sum(self.ratings) / len(self.ratings) if self.ratings else None

    def summary(self) -> dict:
        return {"answers": self.answers, "accepted": self.accepted, "rejected": self.rejected,
                "acceptance_rate": self.acceptance_rate, "ratings": len(self.ratings),
                "mean_rating": self.mean_rating}


def judge(old: FeedbackSample, new: FeedbackSample, alpha: float) -> tuple[bool, dict, list[str]]:
    """(is the new version significantly worse, p-values by metric, sentences)."""
    from selftrain.evaluation.stats import independent_t_test

    level = alpha / 2  # Bonferroni over the two metrics
    worse, tests, reasons = False, {}, []
    if min(old.accepted + old.rejected, new.accepted + new.rejected) >= MIN_SAMPLES:
        p = fisher_exact_worse(old.accepted, old.rejected, new.accepted, new.rejected)
        tests["acceptance_p"] = p
        if p < level:
            worse = True
            reasons.append(f"acceptance {new.acceptance_rate:.0%} vs {old.acceptance_rate:.0%} "
                           f"(Fisher exact one-sided p = {p:.3g})")
    if min(len(old.ratings), len(new.ratings)) >= MIN_SAMPLES:
        t = independent_t_test(list(old.ratings), list(new.ratings))  # statistic: new - old
        p = t.p_value / 2 if t.statistic < 0 else 1 - t.p_value / 2
        tests["rating_p"] = p
        if p < level:
            worse = True
            reasons.append(f"mean rating {new.mean_rating:.2f} vs {old.mean_rating:.2f} "
                           f"(Welch one-sided p = {p:.3g})")
    if not tests:
        reasons.append(f"too little feedback to compare (each side needs {MIN_SAMPLES} votes or ratings)")
    elif not worse:
        reasons.append("not significantly worse on acceptance or ratings")
    return worse, tests, reasons


def feedback_sample(session, version_id: str | None, *, since=None, before=None,
                    limit: int) -> FeedbackSample:
    """Feedback on up to `limit` answers `version_id` (None = base model) gave: the first
    ones from `since` on, or the last ones before `before`."""
    query = select(Interaction).where(Interaction.feedback.any(
        (Feedback.accepted.is_not(None)) | (Feedback.rating.is_not(None))))
    query = query.where(Interaction.model_version.is_(None) if version_id is None
                        else Interaction.model_version == version_id)
    if since is not None:
        query = query.where(Interaction.created_at >= since).order_by(Interaction.id)
    if before is not None:
        query = query.where(Interaction.created_at < before).order_by(Interaction.id.desc())
    accepted = rejected = 0
    ratings = []
    rows = list(session.scalars(query.limit(limit)))
    for row in rows:
        fb = summarize_feedback(row.feedback)
        accepted += fb.accepted is True
        rejected += fb.accepted is False
        if fb.rating is not None:
            ratings.append(fb.rating)
    return FeedbackSample(len(rows), accepted, rejected, tuple(ratings))


@dataclass
class WatchVerdict:
    deployment_id: int
    version: str | None
    previous: str | None
    status: str  # watching | kept | rolled_back
    new: dict
    old: dict = field(default_factory=dict)
    tests: dict = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    restored: str | None = None  # what serves after a rollback (None = the base model)

    def describe(self) -> str:
        name = self.version or "the base model"
        if self.status == "watching":
            return f"{name}: {self.new['answers']} of the answers needed have feedback so far"
        if self.status == "kept":
            return f"{name} kept: " + "; ".join(self.reasons)
        return (f"{name} rolled back to {self.restored or 'the base model'}: " + "; ".join(self.reasons))


def watch_deployment(settings: Settings, db: Database) -> WatchVerdict | None:
    """Judge the deployment being watched, if any, once its window is full; roll back and
    raise an alert when the new version is significantly worse."""
    from selftrain.loop import json_safe
    from selftrain.registry import REGISTRY_LOCK, revert_deployment
    from selftrain.store.locks import hold_lock

    window = int(getattr(settings, "watch_window", 50))
    alpha = float(getattr(settings, "watch_alpha", settings.significance_level))
    with db.session() as session:
        hold_lock(session, REGISTRY_LOCK)  # one judge at a time, and no activation in between
        deployment = session.scalars(select(Deployment).where(Deployment.watch_status == "watching")
                                     .order_by(Deployment.id.desc()).limit(1)).first()
        if deployment is None:
            return None
        new = feedback_sample(session, deployment.version_id, since=deployment.created_at, limit=window)
        verdict = WatchVerdict(deployment.id, deployment.version_id, deployment.previous_version_id,
                               "watching", new.summary())
        if new.answers < window:
            verdict.new["needed"] = window
            return verdict
        old = feedback_sample(session, deployment.previous_version_id, before=deployment.created_at,
                              limit=window)
        worse, verdict.tests, verdict.reasons = judge(old, new, alpha)
        verdict.old = old.summary()
        if worse:
            restored = revert_deployment(session, deployment, reason="auto_rollback")
            verdict.status, verdict.restored = "rolled_back", restored.id if restored else None
            session.add(Alert(kind="auto_rollback", run_id=deployment.version_id, message=(
                f"Version {deployment.version_id} was rolled back to "
                f"{verdict.restored or 'the base model'} after deployment: " + "; ".join(verdict.reasons)
                + f" over {new.answers} answers.")))
        else:
            verdict.status = "kept"
        deployment.watch_status, deployment.decided_at = verdict.status, utcnow()
        deployment.watch_report = json_safe(asdict(verdict))
    return verdict

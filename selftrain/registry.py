"""Model versions: register, activate, roll back, compare, verify, prune.

A version is a LoRA adapter folder under `artifacts/versions/<id>` plus a database row
with its lineage, data, config, metrics, evaluation report, per-file SHA-256 and whether
it passed the gate. At most one version is active (a partial unique index guarantees it);
no active version means the base model serves. Every change of the serving model is also
a row in `deployments`, so "what served before" is always known.

Rollback goes back in version order: to the most recent successful version *older* than
the active one. (The spec's "most recent successful other than the active one" sends a
second rollback forward again, to the version just rolled back from.) With no such
version the rollback is refused and nothing changes, unless the caller asks for the base
model (`to_base=True`, `selftrain rollback --to-base`): falling back to the base model is
a real choice, since it forgets everything learned, so it is never made silently. The
post-deploy watch restores exactly what served before the version it judged, which may
be the base model.

Pruning deletes adapter files, never rows: lineage, metrics and evaluation reports stay
comparable after the weights are gone.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from selftrain.errors import SelftrainError
from selftrain.store.deployments import Deployment
from selftrain.store.locks import hold_lock
from selftrain.store.schema import ModelVersion, utcnow

# Held from the moment a version id is chosen until the row commits, and by anything that
# deletes version folders: a folder without a row is then always an orphan of a crash,
# never a registration in flight.
REGISTRY_LOCK = "selftrain.registry"


def hash_files(directory: Path) -> dict[str, str]:
    hashes = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        hashes[str(path.relative_to(directory))] = digest.hexdigest()
    return hashes


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def next_version_id(session: Session) -> str:
    ids = session.scalars(select(ModelVersion.id)).all()
    numbers = [int(i[1:]) for i in ids if i[:1] == "v" and i[1:].isdigit()]
    return f"v{max(numbers, default=0) + 1:04d}"


def register(session: Session, adapter_dir: Path, versions_dir: Path, *, base_model: str,
             parent_id: str | None, dataset_snapshot_id: str | None, training_config: dict,
             metrics: dict, eval_report: dict, success: bool) -> ModelVersion:
    """Move a freshly trained adapter into the registry and add its row (not yet committed).

    The folder is fsynced and renamed into place, so a crash leaves either no folder or a
    complete one; a folder whose row never committed is ignored and can be pruned. The
    registry lock is held until the caller commits, so concurrent registrations get
    distinct ids and folders.
    """
    hold_lock(session, REGISTRY_LOCK)
    version_id = next_version_id(session)
    hashes = hash_files(adapter_dir)
    if not hashes:
        raise SelftrainError(f"The adapter folder {adapter_dir} is empty; nothing to register.")
    _fsync_tree(adapter_dir)
    versions_dir.mkdir(parents=True, exist_ok=True)
    target = versions_dir / version_id
    if target.exists():  # left by a crash between rename and commit (we hold the lock): an orphan
        shutil.rmtree(target)
    adapter_dir.rename(target)
    version = ModelVersion(id=version_id, parent_id=parent_id, base_model=base_model,
                           adapter_path=str(target), file_hashes=hashes,
                           dataset_snapshot_id=dataset_snapshot_id, training_config=training_config,
                           metrics=metrics, eval_report=eval_report, success=success)
    session.add(version)
    session.flush()
    return version


def active_version(session: Session) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.is_active.is_(True)))


def list_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.created_at, ModelVersion.id)))


def get_version(session: Session, version_id: str) -> ModelVersion:
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise SelftrainError(f"There is no model version {version_id!r}; `selftrain models list` shows them.")
    return version


def verify(version: ModelVersion) -> list[str]:
    """Files whose content no longer matches the hash recorded at registration (all of
    them when the folder is gone, e.g. pruned)."""
    directory = Path(version.adapter_path)
    if not directory.is_dir():
        return sorted(version.file_hashes)
    actual = hash_files(directory)
    return sorted(name for name, digest in version.file_hashes.items() if actual.get(name) != digest)



def files_present(version: ModelVersion) -> bool:
    return Path(version.adapter_path).is_dir()


def _check_servable(version: ModelVersion) -> None:
    if not files_present(version):
        raise SelftrainError(f"Version {version.id}'s adapter files are gone (pruned or deleted); "
                             "it cannot serve.")
    if broken := verify(version):
        verb = "no longer matches its" if len(broken) == 1 else "no longer match their"
        raise SelftrainError(f"Version {version.id} is corrupted: {', '.join(broken)} {verb} recorded SHA-256.")


# --- serving: activate, roll back, and the deployment history ----------------------------

def latest_deployment(session: Session) -> Deployment | None:
    return session.scalars(select(Deployment).order_by(Deployment.id.desc()).limit(1)).first()


def _deploy(session: Session, version: ModelVersion | None, reason: str) -> None:
    """Make `version` (None = the base model) the serving model and record the change."""
    current = active_version(session)
    previous_id = current.id if current else None
    session.execute(update(ModelVersion).where(ModelVersion.is_active.is_(True)).values(is_active=False))
    session.flush()
    if version is not None:
        version.is_active = True
        version.activated_at = utcnow()
    # A deployment still being watched is judged no further once something replaces it.
    session.execute(update(Deployment).where(Deployment.watch_status == "watching")
                    .values(watch_status="superseded", decided_at=utcnow()))
    watched = version is not None and reason in ("cycle", "rl", "manual")
    session.add(Deployment(version_id=version.id if version else None, previous_version_id=previous_id,
                           reason=reason, watch_status="watching" if watched else None))
    session.flush()


def activate(session: Session, version_id: str, *, require_success: bool = True,
             reason: str = "manual") -> ModelVersion:
    """Make `version_id` the one the agent serves with. `reason`: cycle | rl | manual |
    rollback | auto_rollback; activations by a cycle, an RL job or a person are watched
    after deployment."""
    version = get_version(session, version_id)
    if require_success and not version.success:
        raise SelftrainError(f"Version {version_id} did not pass its evaluation gate and cannot be activated.")
    _check_servable(version)
    if version.is_active:
        return version
    _deploy(session, version, reason)
    return version


def rollback(session: Session, *, to_base: bool = False) -> ModelVersion | None:
    """Serve the most recent successful version older than the active one; with none,
    refuse (nothing changes) unless `to_base`, which serves the base model (returns None)."""
    current = active_version(session)
    if current is None:
        raise SelftrainError("No version is active: the base model is already serving.")
    older = [v for v in list_versions(session)
             if v.success and (v.created_at, v.id) < (current.created_at, current.id)]
    if older:
        return activate(session, older[-1].id, reason="rollback")
    if not to_base:
        raise SelftrainError(f"There is no successful version older than {current.id} to roll back to; "
                             "`selftrain rollback --to-base` serves the base model instead.")
    _deploy(session, None, "rollback")
    return None


def revert_deployment(session: Session, deployment: Deployment, *,
                      reason: str = "auto_rollback") -> ModelVersion | None:
    """Serve again what served before `deployment` (None = the base model). When that
    version can no longer serve (its files are gone or corrupted) the base model does."""
    previous = session.get(ModelVersion, deployment.previous_version_id) if deployment.previous_version_id else None
    if previous is not None:
        try:
            _check_servable(previous)
        except SelftrainError:
            previous = None
    _deploy(session, previous, reason)
    return previous


def deployments(session: Session, version_id: str | None = None, limit: int = 20) -> list[Deployment]:
    query = select(Deployment).order_by(Deployment.id.desc()).limit(limit)
    if version_id is not None:
        query = query.where((Deployment.version_id == version_id) | (Deployment.previous_version_id == version_id))
    return list(session.scalars(query))


# --- compare ----------------------------------------------------------------------------

@dataclass(frozen=True)
class MetricDelta:
    name: str
    a: float
    b: float
    difference: float  # b - a
    relative: float | None  # (b - a) / |a|; None when a is 0


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    metrics: list[MetricDelta]
    # Per-problem outcomes on the same suite (same file digest), when both have them:
    # items, how many only a passed / only b passed, and the exact McNemar p-value.
    paired: dict | None


def compare(session: Session, a_id: str, b_id: str) -> Comparison:
    """Every numeric metric the two versions share, b against a, and a paired test of
    their evaluation outcomes when both were evaluated on the same suite."""
    a, b = get_version(session, a_id), get_version(session, b_id)
    deltas = []
    for name in sorted(set(a.metrics or {}) & set(b.metrics or {})):
        x, y = a.metrics[name], b.metrics[name]
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            deltas.append(MetricDelta(name, float(x), float(y), float(y - x),
                                      float((y - x) / abs(x)) if x else None))
    return Comparison(a.id, b.id, deltas, _paired_outcomes(a.eval_report or {}, b.eval_report or {}))


def _paired_outcomes(a: dict, b: dict) -> dict | None:
    from selftrain.evaluation.stats import mcnemar_exact

    if not a.get("suite_digest") or a.get("suite_digest") != b.get("suite_digest"):
        return None
    a_items = {i["task_id"]: bool(i["passed"]) for i in a.get("candidate") or []}
    b_items = {i["task_id"]: bool(i["passed"]) for i in b.get("candidate") or []}
    shared = sorted(set(a_items) & set(b_items))
    if not shared:
        return None
    result = mcnemar_exact([a_items[t] for t in shared], [b_items[t] for t in shared])
    return {"suite": a.get("suite"), "n": len(shared), "only_a_passed": result.b,
            "only_b_passed": result.c, "p_value": result.p_value}


# --- show -------------------------------------------------------------------------------

def describe(session: Session, version_id: str) -> dict:
    """Everything known about one version, for `selftrain models show`."""
    v = get_version(session, version_id)
    lineage, parent = [], v.parent_id
    while parent is not None and len(lineage) < 1000:
        lineage.append(parent)
        parent = session.scalar(select(ModelVersion.parent_id).where(ModelVersion.id == parent))
    present = files_present(v)
    broken = verify(v) if present else []
    size = sum(p.stat().st_size for p in Path(v.adapter_path).rglob("*") if p.is_file()) if present else 0
    gate = (v.eval_report or {}).get("gate") or {}
    return {"id": v.id, "created_at": v.created_at, "active": v.is_active, "passed_gate": v.success,
            "base_model": v.base_model, "lineage": lineage, "adapter_path": v.adapter_path,
            "files": "gone (pruned or deleted)" if not present else (
                "corrupted: " + ", ".join(broken) if broken else f"{len(v.file_hashes)} verified"),
            "size_bytes": size, "dataset_snapshot": v.dataset_snapshot_id,
            "training_config": v.training_config, "metrics": v.metrics,
            "gate": {k: gate.get(k) for k in ("deploy", "improvement", "p_value", "test", "reasons") if k in gate},
            "suite": (v.eval_report or {}).get("suite"),
            "deployments": [{"at": d.created_at, "version": d.version_id, "previous": d.previous_version_id,
                             "reason": d.reason, "watch": d.watch_status}
                            for d in deployments(session, v.id)]}


# --- prune ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PruneReport:
    removed: list[str]  # versions whose adapter files were deleted (rows kept)
    orphans: list[str]  # folders without a committed row (left by crashes), deleted
    protected: list[str]
    freed_bytes: int
    dry_run: bool


def protected_versions(session: Session) -> set[str]:
    """Never pruned: the active version, its parent, the version a rollback would serve,
    and what served before the latest deployment (what the watch would restore)."""
    keep: set[str | None] = set()
    current = active_version(session)
    if current is not None:
        keep |= {current.id, current.parent_id}
        older = [v.id for v in list_versions(session)
                 if v.success and (v.created_at, v.id) < (current.created_at, current.id)]
        keep.add(older[-1] if older else None)
    if (last := latest_deployment(session)) is not None:
        keep |= {last.version_id, last.previous_version_id}
    return {k for k in keep if k}


def prune(session: Session, versions_dir: Path, *, keep: int = 5, dry_run: bool = False) -> PruneReport:
    """Delete the adapter files of all but the `keep` newest versions, never a protected
    one, and every orphan folder a crash left behind."""
    if keep < 0:
        raise SelftrainError(f"--keep must be 0 or more, got {keep}.")
    hold_lock(session, REGISTRY_LOCK)
    protected = protected_versions(session)
    newest_first = list_versions(session)[::-1]
    doomed = [v for v in newest_first[keep:] if v.id not in protected and files_present(v)]
    orphans = orphan_folders(session, versions_dir)
    folders = [Path(v.adapter_path) for v in doomed] + [versions_dir / name for name in orphans]
    freed = sum(p.stat().st_size for folder in folders for p in folder.rglob("*") if p.is_file())
    if not dry_run:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    return PruneReport([v.id for v in doomed][::-1], orphans, sorted(protected), freed, dry_run)


def orphan_folders(session: Session, versions_dir: Path) -> list[str]:
    """Folders under `versions_dir` no committed version row points at. Only meaningful
    with the registry lock held (see REGISTRY_LOCK)."""
    if not versions_dir.is_dir():
        return []
    known = {Path(p).name for p in session.scalars(select(ModelVersion.adapter_path))}
    return sorted(p.name for p in versions_dir.iterdir() if p.is_dir() and p.name not in known)


def remove_orphans(session: Session, versions_dir: Path) -> list[str]:
    """Delete the folders crashes left between an adapter's rename and its row's commit."""
    hold_lock(session, REGISTRY_LOCK)
    orphans = orphan_folders(session, versions_dir)
    for name in orphans:
        shutil.rmtree(versions_dir / name, ignore_errors=True)
    return orphans

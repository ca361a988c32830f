"""Model versions: register, activate, roll back, verify.

A version is a LoRA adapter folder under `artifacts/versions/<id>` plus a database row
with its lineage, data, config, metrics, evaluation report, per-file SHA-256 and whether
it passed the gate. At most one version is active (a partial unique index guarantees it);
no active version means the base model serves.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from selftrain.errors import SelftrainError
from selftrain.store.schema import ModelVersion, utcnow


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
    complete one; a folder whose row never committed is ignored and can be pruned.
    """
    version_id = next_version_id(session)
    hashes = hash_files(adapter_dir)
    if not hashes:
        raise SelftrainError(f"The adapter folder {adapter_dir} is empty; nothing to register.")
    _fsync_tree(adapter_dir)
    versions_dir.mkdir(parents=True, exist_ok=True)
    target = versions_dir / version_id
    if target.exists():  # left by a crash between rename and commit: not registered, replace it
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
    """Files whose content no longer matches the hash recorded at registration."""
    directory = Path(version.adapter_path)
    if not directory.is_dir():
        return sorted(version.file_hashes)
    actual = hash_files(directory)
    return sorted(name for name, digest in version.file_hashes.items() if actual.get(name) != digest)


def activate(session: Session, version_id: str, *, require_success: bool = True) -> ModelVersion:
    """Make `version_id` the one the agent serves with."""
    version = get_version(session, version_id)
    if require_success and not version.success:
        raise SelftrainError(f"Version {version_id} did not pass its evaluation gate and cannot be activated.")
    if broken := verify(version):
        raise SelftrainError(f"Version {version_id} is corrupted: {', '.join(broken)} no longer "
                             "match their recorded SHA-256.")
    session.execute(update(ModelVersion).where(ModelVersion.is_active.is_(True)).values(is_active=False))
    session.flush()
    version.is_active = True
    version.activated_at = utcnow()
    session.flush()
    return version


def rollback(session: Session) -> ModelVersion | None:
    """Activate the most recent successful version other than the active one (the spec's
    rule), or the base model (returns None) when there is none: the base model is the
    version every other one was trained from, so it is always there to fall back to."""
    current = active_version(session)
    if current is None:
        raise SelftrainError("No version is active: the base model is already serving.")
    candidates = [v for v in list_versions(session) if v.success and v.id != current.id]
    if candidates:
        return activate(session, candidates[-1].id)
    current.is_active = False
    session.flush()
    return None

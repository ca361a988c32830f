"""The registry beyond register/activate: rollback rules, deployment history, compare,
show, prune, and what a crash between an adapter's rename and its commit leaves."""

import signal
import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import select

from selftrain.errors import SelftrainError
from selftrain.registry import (activate, active_version, compare, describe, deployments,
                                list_versions, protected_versions, prune, remove_orphans, rollback)
from selftrain.store.deployments import Deployment
from selftrain.store.schema import ModelVersion

from .conftest import REPO, add_version, service_env


def test_rollback_goes_back_in_version_order_and_records_every_change(db, tmp_path):
    v1, v2 = add_version(db, tmp_path), add_version(db, tmp_path)
    failed = add_version(db, tmp_path, success=False)
    v4 = add_version(db, tmp_path)
    with db.session() as s:
        activate(s, v1)
        activate(s, v4, reason="cycle")
        activate(s, v4)  # already active: no new deployment
    with db.session() as s:
        assert rollback(s).id == v2  # the failed v0003 is skipped
    with db.session() as s:
        assert rollback(s).id == v1  # and again: further back, never forward to v4
    with db.session() as s, pytest.raises(SelftrainError, match="no successful version older than v0001.*--to-base"):
        rollback(s)
    with db.session() as s:
        assert active_version(s).id == v1  # the refusal changed nothing
        assert rollback(s, to_base=True) is None
    with db.session() as s, pytest.raises(SelftrainError, match="base model is already serving"):
        rollback(s)
    with db.session() as s:
        history = [(d.previous_version_id, d.version_id, d.reason, d.watch_status)
                   for d in reversed(deployments(s))]
    assert history == [(None, v1, "manual", "superseded"), (v1, v4, "cycle", "superseded"),
                       (v4, v2, "rollback", None), (v2, v1, "rollback", None), (v1, None, "rollback", None)]
    assert failed == "v0003"


def test_compare_metric_by_metric_with_a_paired_test_on_the_same_suite(db, tmp_path):
    def report(passed):
        return {"suite": "s", "suite_digest": "abc",
                "candidate": [{"task_id": f"t{i}", "passed": p} for i, p in enumerate(passed)]}

    a = add_version(db, tmp_path, metrics={"pass_rate": 0.25, "eval_loss": 2.0, "note": "x"},
                    eval_report=report([True, False, False, False] * 2))
    b = add_version(db, tmp_path, metrics={"pass_rate": 1.0, "eval_loss": 1.5},
                    eval_report=report([True] * 8))
    with db.session() as s:
        result = compare(s, a, b)
    by_name = {m.name: m for m in result.metrics}
    assert set(by_name) == {"pass_rate", "eval_loss"}  # shared numeric metrics only
    assert by_name["pass_rate"].difference == 0.75 and by_name["pass_rate"].relative == 3.0
    assert by_name["eval_loss"].relative == -0.25
    # 6 items only b passed, none only a passed: exact McNemar p = 2 * 0.5**6 = 0.03125
    assert result.paired == {"suite": "s", "n": 8, "only_a_passed": 0, "only_b_passed": 6,
                             "p_value": pytest.approx(0.03125)}
    with db.session() as s, pytest.raises(SelftrainError, match="no model version 'v0099'"):
        compare(s, a, "v0099")


def test_prune_keeps_rows_and_protected_versions_and_removes_orphans(db, tmp_path):
    ids = [add_version(db, tmp_path) for _ in range(6)]
    with db.session() as s:
        activate(s, ids[1])
        activate(s, ids[2])  # active v0003; what served before it: v0002; rollback target: v0002
    (tmp_path / "versions" / "v0042").mkdir()  # a crash's leftover: no row
    (tmp_path / "versions" / "v0042" / "adapter_model.safetensors").write_text("orphan")
    with db.session() as s:
        assert protected_versions(s) == {"v0002", "v0003"}
        dry = prune(s, tmp_path / "versions", keep=2, dry_run=True)
    assert dry.removed == ["v0001", "v0004"] and dry.orphans == ["v0042"] and dry.freed_bytes > 0
    assert all((tmp_path / "versions" / v).is_dir() for v in ids)  # a dry run deletes nothing
    with db.session() as s:
        done = prune(s, tmp_path / "versions", keep=2)
    assert done.removed == ["v0001", "v0004"]
    left = sorted(p.name for p in (tmp_path / "versions").iterdir())
    assert left == ["v0002", "v0003", "v0005", "v0006"]
    with db.session() as s:
        assert len(list_versions(s)) == 6  # records stay
        assert describe(s, "v0001")["files"] == "gone (pruned or deleted)"
        assert describe(s, "v0003")["files"] == "2 verified" and describe(s, "v0003")["active"]
    with db.session() as s, pytest.raises(SelftrainError, match="v0001's adapter files are gone"):
        activate(s, "v0001")
    with db.session() as s, pytest.raises(SelftrainError, match="--keep must be 0 or more"):
        prune(s, tmp_path / "versions", keep=-1)


def test_show_describes_lineage_and_deployments(db, tmp_path):
    v1 = add_version(db, tmp_path)
    v2 = add_version(db, tmp_path, parent=v1, metrics={"pass_rate": 0.75})
    with db.session() as s:
        activate(s, v2, reason="cycle")
    with db.session() as s:
        info = describe(s, v2)
    assert info["lineage"] == [v1] and info["active"] and info["metrics"] == {"pass_rate": 0.75}
    assert info["deployments"][0]["reason"] == "cycle" and info["deployments"][0]["watch"] == "watching"


def test_a_crash_between_rename_and_commit_leaves_only_an_orphan_folder(tmp_path):
    """SIGKILL a real process right after register() renamed the adapter into place and
    before its transaction committed: no row, a folder that recovery deletes."""
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    from selftrain.store.db import Database

    Database(url).close()
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from selftrain.registry import register
        from selftrain.store.db import Database
        db = Database({url!r})
        adapter = Path({str(tmp_path / 'adapter')!r}); adapter.mkdir()
        (adapter / "adapter_model.safetensors").write_text("w")
        with db.session() as s:
            register(s, adapter, Path({str(tmp_path / 'versions')!r}), base_model="tiny", parent_id=None,
                     dataset_snapshot_id=None, training_config={{}}, metrics={{}}, eval_report={{}},
                     success=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=service_env(), cwd=REPO, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "versions" / "v0001").is_dir()
    db = Database(url)
    with db.session() as s:
        assert s.scalars(select(ModelVersion)).all() == []
    with db.session() as s:
        assert remove_orphans(s, tmp_path / "versions") == ["v0001"]
    assert not (tmp_path / "versions" / "v0001").exists()
    assert add_version(db, tmp_path) == "v0001"  # the id is free again
    with db.session() as s:
        assert s.scalars(select(Deployment)).all() == []

import pytest

from selftrain.errors import SelftrainError
from selftrain.registry import activate, active_version, list_versions, register, rollback, verify
from selftrain.store.db import Database


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'r.db'}")
    yield database
    database.close()


def add_version(db, tmp_path, success, content="weights"):
    adapter = tmp_path / f"adapter-{len(list(tmp_path.iterdir()))}"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_text(content)
    (adapter / "adapter_config.json").write_text("{}")
    with db.session() as s:
        v = register(s, adapter, tmp_path / "versions", base_model="tiny", parent_id=None,
                     dataset_snapshot_id=None, training_config={"lr": 1}, metrics={"pass_rate": 0.5},
                     eval_report={}, success=success)
        assert not adapter.exists()  # moved, not copied
        return v.id


def test_register_moves_the_adapter_and_records_hashes(db, tmp_path):
    vid = add_version(db, tmp_path, success=True)
    with db.session() as s:
        (v,) = list_versions(s)
        assert vid == v.id == "v0001" and not v.is_active
        assert set(v.file_hashes) == {"adapter_model.safetensors", "adapter_config.json"}
        assert verify(v) == []


def test_activate_and_rollback(db, tmp_path):
    first, second = add_version(db, tmp_path, True), add_version(db, tmp_path, True)
    failed = add_version(db, tmp_path, False)
    with db.session() as s:
        activate(s, first)
        activate(s, second)
    with db.session() as s:
        assert active_version(s).id == second
        with pytest.raises(SelftrainError, match=f"Version {failed} did not pass its evaluation gate"):
            activate(s, failed)
    with db.session() as s:
        assert rollback(s).id == first  # most recent successful other than the active one
    with db.session() as s:
        assert active_version(s).id == first


def test_rollback_from_the_only_version_returns_to_the_base_model_only_when_asked(db, tmp_path):
    only = add_version(db, tmp_path, True)
    with db.session() as s:
        activate(s, only)
    with db.session() as s, pytest.raises(SelftrainError, match="no successful version older than v0001"):
        rollback(s)
    with db.session() as s:
        assert active_version(s).id == only  # refused: nothing changed
    with db.session() as s:
        assert rollback(s, to_base=True) is None
        assert active_version(s) is None
    with db.session() as s, pytest.raises(SelftrainError, match="base model is already serving"):
        rollback(s)


def test_corrupted_adapter_cannot_be_activated(db, tmp_path):
    vid = add_version(db, tmp_path, True)
    (tmp_path / "versions" / vid / "adapter_model.safetensors").write_text("tampered")
    with db.session() as s, pytest.raises(SelftrainError, match="adapter_model.safetensors no longer match"):
        activate(s, vid)
    with db.session() as s:
        assert active_version(s) is None


def test_unknown_version(db):
    with db.session() as s, pytest.raises(SelftrainError, match="no model version 'v9999'"):
        activate(s, "v9999")

"""Dataset snapshots: the curated examples as a content-addressed JSONL artifact, its
stage counts and drop reasons beside it (`<sha256>.stats.json`), and a
`dataset_snapshots` row pointing at both.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from sqlalchemy import select

from selftrain.data.curate import Curation, read_snapshot, write_snapshot
from selftrain.data.example import render_text
from selftrain.errors import SelftrainError
from selftrain.store.schema import DatasetSnapshot


def store_snapshot(db, curation: Curation, artifacts_dir: Path) -> tuple[str, Path]:
    """Write the artifact and its stats, and record the row (once per content hash)."""
    digest, path = write_snapshot(curation.examples, Path(artifacts_dir) / "datasets")
    stats = curation.stats()
    stats_path = path.with_name(f"{digest}.stats.json")
    tmp = stats_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stats, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(stats_path)
    with db.session() as session:
        if session.get(DatasetSnapshot, digest) is None:
            session.add(DatasetSnapshot(id=digest, path=str(path), n_examples=len(curation.examples), stats=stats))
    return digest, path


def find_snapshot(session, ref: str) -> DatasetSnapshot:
    """A snapshot by its id, a unique prefix of it (4+ characters), or 'latest'."""
    if ref == "latest":
        row = session.scalars(select(DatasetSnapshot).order_by(DatasetSnapshot.created_at.desc())).first()
        if row is None:
            raise SelftrainError("There are no dataset snapshots yet; `selftrain data build` makes one.")
        return row
    if len(ref) < 4 or not all(ch in "0123456789abcdef" for ch in ref.lower()):
        raise SelftrainError(f"A snapshot is named by 4 or more hex characters of its id, or 'latest'; got {ref!r}.")
    rows = list(session.scalars(select(DatasetSnapshot).where(DatasetSnapshot.id.startswith(ref.lower()))))
    if not rows:
        raise SelftrainError(f"There is no dataset snapshot whose id starts with {ref!r}.")
    if len(rows) > 1:
        raise SelftrainError(f"{len(rows)} snapshots start with {ref!r}; give more characters.")
    return rows[0]


def load_examples(row: DatasetSnapshot):
    try:
        return read_snapshot(Path(row.path))
    except OSError as exc:
        raise SelftrainError(f"The file of snapshot {row.id[:12]} is unreadable ({row.path}): {exc.strerror}.") from None


def export_snapshot(row: DatasetSnapshot, out: Path) -> int:
    """Write the snapshot's examples as JSONL, each with its text in the spec's layout."""
    examples = load_examples(row)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        for e in examples:
            fh.write(json.dumps({**asdict(e), "text": render_text(e.prompt, e.code, e.explanation)},
                                ensure_ascii=False) + "\n")
    return len(examples)

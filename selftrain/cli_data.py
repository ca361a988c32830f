"""`selftrain data ...`: build, inspect, export and import curated dataset snapshots.

Thin commands over `selftrain.data`; the work and its explanations live there.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from selftrain.cli_common import database as _db
from selftrain.cli_common import settings as _settings

app = typer.Typer(
    help="Curated training data: build snapshots, inspect them, export and import.\n\n"
         "Examples:\n\n"
         "  selftrain data build                          # unconsumed interactions → snapshot\n\n"
         "  selftrain data build --external extra.jsonl --synthetic 1\n\n"
         "  selftrain data show latest\n\n"
         "  selftrain data export latest train.jsonl\n\n"
         "  selftrain data import dataset.csv --map prompt=question,code=solution",
    no_args_is_help=True)

_SYNTHETIC = typer.Option(0, "--synthetic", min=0, help="Mutants to make of each example (0 = none).")
_BALANCE = typer.Option("smallest", "--balance", help="'smallest' (spec: down-sample to the smallest "
                        "category) or 'none'.")
_CAP = typer.Option(None, "--cap", min=1, help="At most this many examples per category.")
_MAP = typer.Option(None, "--map", help="Field mapping for external files, e.g. prompt=question,code=solution.")
_STRICT = typer.Option(False, "--strict", help="Refuse the whole file at its first malformed line "
                       "(default: skip malformed lines and report them).")
_VERIFY = typer.Option(True, "--verify/--no-verify", help="Run mutants of examples that have tests in the "
                       "sandbox, keeping only those that pass (without it they are not made).")


def _config(settings, synthetic: int, balance: str, cap: Optional[int]):
    from selftrain.data.pipeline import CurationConfig
    from selftrain.errors import SelftrainError

    if balance not in ("smallest", "none"):
        raise SelftrainError(f"--balance must be 'smallest' or 'none', got {balance!r}.")
    return CurationConfig.from_settings(settings, synthetic_per_example=synthetic, balance=balance,
                                        category_cap=cap)


def _verifier(settings, enabled: bool):
    if not enabled:
        return None
    from selftrain.errors import SelftrainError
    from selftrain.evaluation.sandbox import isolation_available
    from selftrain.loop import make_sandbox

    if not isolation_available() and not settings.allow_unsafe_execution:
        raise SelftrainError("Mutants of examples with tests must pass them in the sandbox, and bubblewrap "
                             "isolation is unavailable here; pass --no-verify to mutate only examples without tests.")
    sandbox = make_sandbox(settings)
    return lambda code, tests: sandbox.run(code, tests).passed


def _read_external(files, mapping_text, strict):
    from selftrain.data.collect import parse_mapping, read_external

    mapping = parse_mapping(mapping_text)
    candidates, notes = [], []
    for f in files or []:
        data = read_external(f, mapping, strict=strict)
        candidates += data.candidates
        if data.errors:
            notes.append(f"{f}: skipped {len(data.errors)} malformed of {data.rows} lines:")
            notes += ["  " + e for e in data.errors[:10]] + (["  ..."] if len(data.errors) > 10 else [])
    return candidates, notes


def _store_and_print(settings, db, curation, notes) -> None:
    from selftrain.data.snapshot import store_snapshot

    from selftrain.errors import SelftrainError

    for note in notes:
        typer.echo(note, err=True)
    if not curation.examples:
        _print_stats(curation.stats(), "-", "(not stored)")
        raise SelftrainError("No example survived curation, so no snapshot was stored; the drops above say why.")
    digest, path = store_snapshot(db, curation, settings.artifacts_dir)
    _print_stats(curation.stats(), digest, str(path))


@app.command()
def build(external: Optional[List[Path]] = typer.Option(None, "--external", help="Also curate this dataset "
                                                          "(JSONL, CSV or a saved Hugging Face dataset); repeatable."),
          mapping: Optional[str] = _MAP, strict: bool = _STRICT, synthetic: int = _SYNTHETIC,
          balance: str = _BALANCE, cap: Optional[int] = _CAP, verify: bool = _VERIFY):
    """Curate the interactions no cycle has learned from (and any external files) into a snapshot.

    The interactions stay unconsumed: only a learning cycle consumes them.

    Example: selftrain data build --external extra.jsonl --synthetic 1
    """
    from selftrain.data.clean import Exclusions
    from selftrain.data.curate import curate_interactions
    from selftrain.evaluation.suites import load_suite
    from selftrain.store.records import summarize_feedback, unconsumed_interactions

    settings = _settings()
    extra, notes = _read_external(external, mapping, strict)
    suite = load_suite(settings.eval_suite)
    db = _db(settings)
    with db.session() as session:
        items = [(i, summarize_feedback(i.feedback)) for i in unconsumed_interactions(session)]
    curation = curate_interactions(items, exclusions=Exclusions.from_problems(suite.problems), external=extra,
                                   config=_config(settings, synthetic, balance, cap),
                                   verify=_verifier(settings, verify and synthetic > 0))
    _store_and_print(settings, db, curation, notes)


@app.command("import")
def import_(file: Path = typer.Argument(..., help="JSONL, CSV, or a folder saved by datasets' save_to_disk."),
            mapping: Optional[str] = _MAP, strict: bool = _STRICT, synthetic: int = _SYNTHETIC,
            balance: str = _BALANCE, cap: Optional[int] = _CAP, verify: bool = _VERIFY):
    """Curate an external dataset (or an exported snapshot) into a snapshot of its own.

    Each row needs a prompt and code; explanation, category, entry_point and tests are
    optional. Malformed lines are reported with file and line and skipped (or, with
    --strict, the file is refused whole).

    Example: selftrain data import dataset.csv --map prompt=question,code=solution
    """
    from selftrain.data.clean import Exclusions
    from selftrain.data.pipeline import curate
    from selftrain.evaluation.suites import load_suite

    settings = _settings()
    candidates, notes = _read_external([file], mapping, strict)
    suite = load_suite(settings.eval_suite)
    curation = curate(candidates, config=_config(settings, synthetic, balance, cap),
                      exclusions=Exclusions.from_problems(suite.problems),
                      verify=_verifier(settings, verify and synthetic > 0))
    _store_and_print(settings, _db(settings), curation, notes)


@app.command()
def show(snapshot: str = typer.Argument("latest", help="Snapshot id (or a unique prefix), or 'latest'."),
         examples: int = typer.Option(3, "--examples", min=0, help="How many examples to print."),
         drops: int = typer.Option(10, "--drops", min=0, help="How many individual drops to list.")):
    """Stage counts, category balance, drop reasons and a few examples of a snapshot.

    Example: selftrain data show latest --examples 5
    """
    from selftrain.data.snapshot import find_snapshot, load_examples

    settings = _settings()
    with _db(settings).session() as session:
        row = find_snapshot(session, snapshot)
    _print_stats(row.stats or {}, row.id, row.path, drops=drops)
    for e in load_examples(row)[:examples]:
        typer.echo(f"\n--- {e.ref or e.interaction_id} [{e.category}, {e.target}, quality {e.quality}]")
        typer.echo(e.prompt.strip())
        typer.echo(e.code.rstrip())


@app.command()
def export(snapshot: str = typer.Argument(..., help="Snapshot id (or a unique prefix), or 'latest'."),
           file: Path = typer.Argument(..., help="Where to write the JSONL.")):
    """Write a snapshot's examples as JSONL (each with its text in the spec's layout).

    Example: selftrain data export latest train.jsonl
    """
    from selftrain.data.snapshot import export_snapshot, find_snapshot

    settings = _settings()
    with _db(settings).session() as session:
        row = find_snapshot(session, snapshot)
    n = export_snapshot(row, file)
    typer.echo(f"Wrote {n} examples of snapshot {row.id[:12]} to {file}.")


def _print_stats(stats: dict, digest: str, path: str, drops: int = 10) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"Snapshot [bold]{digest[:12]}[/bold] ({stats.get('kept', '?')} examples from "
                  f"{stats.get('input', '?')} inputs) at {path}")
    table = Table("stage", "in", "out", "seconds", title="Stages")
    for s in stats.get("stages", []):
        table.add_row(s["stage"], str(s["in"]), str(s["out"]), f"{s.get('seconds', 0):.2f}")
    console.print(table)
    for title, counts in (("Dropped", stats.get("dropped", {})), ("Categories", stats.get("categories", {})),
                          ("Targets", stats.get("targets", {})), ("Secrets replaced", stats.get("secrets", {}))):
        if counts:
            console.print(f"{title}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    synthetic = stats.get("synthetic") or {}
    if synthetic.get("added") or synthetic.get("rejected") or synthetic.get("skipped for balance"):
        skipped = synthetic.get("skipped for balance")
        console.print(f"Synthetic: {synthetic.get('added', 0)} added; rejected "
                      + (", ".join(f"{k} {v}" for k, v in synthetic.get("rejected", {}).items()) or "none")
                      + (f"; {skipped} examples not mutated (balancing would drop their mutants)" if skipped else ""))
    quality = (stats.get("quality") or {}).get("scored") or {}
    if quality.get("n"):
        console.print(f"Quality of {quality['n']} scored: min {quality['min']:.2f}, median {quality['median']:.2f}, "
                      f"mean {quality['mean']:.2f}; histogram (0.0-1.0 by 0.1) {quality['histogram']}")
    listed = stats.get("drops", [])[:drops]
    for d in listed:
        console.print(f"  dropped {d['ref']} at {d['stage']}: {d['reason']}"
                      + (f" ({d['detail']})" if d.get("detail") else ""))
    if len(stats.get("drops", [])) > len(listed):
        console.print(f"  ... {len(stats['drops']) - len(listed)} more (--drops N)")

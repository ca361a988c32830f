"""What every command group of the CLI shares: the workspace chosen on the command line,
the settings and database it opens, and the console output goes to."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


class State:
    workspace: Optional[Path] = None  # --workspace, set by the root callback in cli.py


def settings():
    from selftrain.config import load_settings

    return load_settings(State.workspace)


def database(s):
    from selftrain.store.db import Database

    s.workspace.mkdir(parents=True, exist_ok=True)
    return Database(s.resolved_database_url)


def console():
    from rich.console import Console

    return Console()

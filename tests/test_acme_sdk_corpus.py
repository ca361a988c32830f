"""The in-house library corpus of bench/acme_sdk.py holds its invariants, and the prelude that
makes the library importable in the sandbox works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "bench" / "acme_sdk"


def test_checker_passes_on_the_corpus():
    """Every reference passes its tests with the library and fails without it; split rules hold."""
    run = subprocess.run([sys.executable, str(CORPUS / "check.py")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stdout.rstrip().endswith("OK")
    assert "references passing their tests: 130/130" in run.stdout


def test_prelude_registers_the_library_for_the_answer(monkeypatch):
    monkeypatch.setattr(sys, "path", [str(ROOT / "bench"), *sys.path])  # the bench adds to it too: undone after
    from acme_sdk import prelude

    monkeypatch.delitem(sys.modules, "acme", raising=False)
    namespace: dict = {}
    program = prelude((CORPUS / "acme.py").read_text()) + "from acme import format_money\nvalue = format_money(123450)\n"
    exec(compile(program, "answer.py", "exec"), namespace)
    assert namespace["value"] == "1,234.50 EUR"
    assert "_acme" not in namespace and "_sys" not in namespace  # the prelude leaves no names behind
    with pytest.raises(ImportError):
        exec("from acme import no_such_helper", namespace)

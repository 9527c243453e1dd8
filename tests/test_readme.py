"""The README says what the code does: its thresholds table is the one the checks declare, and its two set-up
commands are the ones the project runs."""

from __future__ import annotations

from pathlib import Path

from audit.gate import thresholds_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_thresholds_table_is_the_declared_one() -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- thresholds:")
    table = text[text.index("\n", start) + 1:text.index("<!-- /thresholds -->")]
    assert table == thresholds_markdown(), "regenerate the README's table with audit.gate.thresholds_markdown()"


def test_the_two_setup_commands_are_the_ones_ci_and_users_run() -> None:
    text = README.read_text(encoding="utf-8")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    test_command = "python3 -m pip install -q 'nox>=2024.4' && python3 -m nox -s lint tests"
    assert test_command in text and test_command in ci
    assert "python3 -m venv .venv && .venv/bin/pip install -e '.[mongo]' && .venv/bin/label-audit demo" in text


def test_benchmark_tables_are_the_committed_results() -> None:
    """Every benchmark number in the README is a copy of a committed result file (benchmarks/readme.py)."""
    from benchmarks import readme

    text = README.read_text(encoding="utf-8")
    for name in readme.BLOCKS:
        assert readme.current(text, name) == readme.block(name), (
            f"the README's {name} block differs from its results file: run python -m benchmarks.readme")

"""Exit codes and one-line errors shared by the ``label-audit`` commands (:mod:`audit.cli`) and their
``review`` group (:mod:`audit.cli_review`), so neither command module imports the other's helpers."""

from __future__ import annotations

import typer

EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def fail(message: str) -> typer.Exit:
    """Print ``label-audit: error: <message>`` on stderr; the exit (code 2) for the caller to raise."""
    typer.secho(f"label-audit: error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(EXIT_BAD_INPUT)


def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or a missing resource: reported in one line, exit 2."""
    from audit.checks.base import CheckError, CheckInputError
    from audit.config import ConfigError
    from audit.embeddings import EmbedderError
    from audit.results import RunNotFoundError
    from audit.sources import SourceError

    return (ConfigError, SourceError, EmbedderError, CheckInputError, CheckError, RunNotFoundError,
            FileNotFoundError, ValueError)

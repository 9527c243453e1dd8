"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s bench`, `nox -s notebook`, `nox -s demo`.

All sessions share one virtual environment, `.venv` at the repository root, because torch and FiftyOne are
large: creating it once (about two minutes offline) beats one copy per session. The tests session also installs
the system packages the browser tests need (Debian's chromium) when it runs as root and they are missing.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "none"


def _venv(session: nox.Session) -> None:
    """Create/refresh .venv with label-audit, its offline MongoDB and the test tools."""
    if not (BIN / "python").exists():
        session.run(sys.executable, "-m", "venv", str(VENV), external=True)
    stamp = VENV / ".installed"
    if not stamp.exists() or stamp.stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime:
        session.run(str(BIN / "python"), "-m", "pip", "install", "-q", "-e", ".[mongo,test]", external=True)
        stamp.touch()


def _system_packages(session: nox.Session) -> None:
    """Debian's chromium for the browser tests (a test tool's own browser download cannot work offline)."""
    if shutil.which("chromium"):
        return
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        session.run("apt-get", "update", "-qq", external=True)
        session.run("apt-get", "install", "-y", "-qq", "chromium", external=True,
                    env={"DEBIAN_FRONTEND": "noninteractive"})
    else:
        session.warn("chromium is missing: install Debian's `chromium` package for the browser tests")


def _labelstudio(session: nox.Session) -> None:
    """Label Studio in its own venv, .ls-venv (its pins clash with ours), for the integration tests' real server.

    tests/labelstudio_server.py owns the version and the install (about a minute once; instant afterwards)."""
    session.run(sys.executable, "-c", "from tests.labelstudio_server import ensure_installed; ensure_installed()",
                external=True)


def _env() -> dict[str, str]:
    return {"FIFTYONE_DO_NOT_TRACK": "true", "PYTHONHASHSEED": "0"}


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, browser, FiftyOne and notebook tests included (exit 5, no tests, fails too)."""
    _system_packages(session)
    _venv(session)
    _labelstudio(session)
    # --durations: every CI log says where the time goes (the budget is in the README's Development section).
    session.run(str(BIN / "pytest"), *(session.posargs or ["-q", "--durations=15"]), external=True, env=_env())


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the package, tests, benchmarks and this file."""
    _venv(session)
    session.run(str(BIN / "ruff"), "check", "audit", "tests", "benchmarks", "noxfile.py", external=True)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: detection quality against peers and pipeline speed; `nox -s bench -- --quick` for CI's form.
    Prints a table and writes benchmarks/results/."""
    _venv(session)
    session.run(str(BIN / "python"), "-m", "benchmarks", *session.posargs, external=True, env=_env())


@nox.session
def notebook(session: nox.Session) -> None:
    """Execute notebooks/walkthrough.ipynb so it never rots."""
    _venv(session)
    session.run(str(BIN / "pytest"), "-q", "-m", "notebook", external=True, env=_env())


@nox.session
def demo(session: nox.Session) -> None:
    """Run the embedded demo end to end."""
    _venv(session)
    session.run(str(BIN / "label-audit"), "demo", *session.posargs, external=True, env=_env())

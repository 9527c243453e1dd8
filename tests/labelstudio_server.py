"""A real Label Studio server for the integration tests, in its own virtual environment.

Label Studio pins versions that clash with ours (Django, pydantic...), so it lives in ``.ls-venv`` at the
repository root, created on first use with ``python3 -m venv .ls-venv && .ls-venv/bin/pip install
label-studio==1.23.2`` (about a minute; `nox -s tests` does it before pytest). The server runs offline on a free
localhost port with a throw-away data folder, a first user and a fixed API token set through Label Studio's
environment variables, local-files serving under a given document root, and Sentry, analytics and the version
check turned off (they only retry against the internet).

Run by hand: ``python tests/labelstudio_server.py`` installs if needed, starts a server, prints its URL and token,
and stops it on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LS_VERSION = "1.23.2"
LS_VENV = REPO / ".ls-venv"
STAMP = f".installed-label-studio-{LS_VERSION}"
TEMPLATE_DB = f"label-studio-{LS_VERSION}-migrated.sqlite3"
DB_NAME = "label_studio.sqlite3"  # Label Studio's SQLite file in its base data folder
# Run by the Label Studio venv's python: apply every migration to an empty database, create nobody.
_MIGRATE = "from label_studio.server import _apply_database_migrations, _setup_env; _setup_env(); " \
           "_apply_database_migrations()"


def label_studio_executable(venv: Path = LS_VENV) -> Path:
    return venv / "bin" / "label-studio"


def ensure_installed(venv: Path = LS_VENV, quiet: bool = True) -> Path:
    """Create ``venv`` with Label Studio and a migrated empty database if they are not there yet; returns the
    ``label-studio`` executable.

    Idempotent and quick once installed (a stamp file marks a finished install, so an interrupted one is
    completed next time); a lock file keeps two concurrent test sessions from installing at once. The migrated
    database (no users yet) is the template every test server starts from: applying Label Studio's migrations
    is most of a first start (about 50 s of 55 on two busy cores), a copied database starts in about 5 s.
    """
    executable = label_studio_executable(venv)
    if (venv / STAMP).is_file() and executable.is_file() and (venv / TEMPLATE_DB).is_file():
        return executable
    import fcntl

    venv.mkdir(parents=True, exist_ok=True)  # `python -m venv` accepts an existing empty folder
    with open(venv / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ((venv / STAMP).is_file() and executable.is_file()):
            python = shutil.which("python3") or sys.executable
            if not (venv / "bin" / "python").is_file():
                subprocess.run([python, "-m", "venv", str(venv)], check=True)
            quiet_flags = ["-q"] if quiet else []
            subprocess.run([str(venv / "bin" / "pip"), "install", *quiet_flags, f"label-studio=={LS_VERSION}"],
                           check=True)
            (venv / STAMP).write_text(LS_VERSION)
        if not (venv / TEMPLATE_DB).is_file():
            with tempfile.TemporaryDirectory(prefix="ls-template-") as folder:
                env = server_environment(Path(folder), Path(folder), "", "", "")
                done = subprocess.run([str(venv / "bin" / "python"), "-c", _MIGRATE], cwd=folder, env=env,
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"migrating Label Studio's template database failed:\n{done.stderr[-3000:]}")
                shutil.copyfile(Path(folder) / DB_NAME, venv / f"{TEMPLATE_DB}.tmp")
            os.replace(venv / f"{TEMPLATE_DB}.tmp", venv / TEMPLATE_DB)
    return executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LabelStudioServer:
    """A running server: ``url``, the API ``token`` (legacy ``Token`` auth), the first user's credentials."""

    url: str
    token: str
    username: str
    password: str
    data_dir: Path
    document_root: Path
    log_path: Path
    process: subprocess.Popen = field(repr=False)
    start_seconds: float = 0.0

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server and whatever it started (it runs in its own process group)."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def server_environment(data_dir: Path, document_root: Path, username: str, password: str,
                       token: str) -> dict[str, str]:
    """The environment variables that configure an offline, throw-away Label Studio."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_USERNAME": username,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "SENTRY_DSN": "",  # empty: Sentry is not initialised at all
        "FRONTEND_SENTRY_DSN": "",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_CONVERTER_DOWNLOAD_RESOURCES": "false",
        "SECRET_KEY": secrets.token_hex(32),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    })
    return env


def _get(url: str, token: str | None = None, timeout: float = 5.0) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


def start_server(data_dir: Path, document_root: Path, *, port: int | None = None, timeout: float = 240.0,
                 username: str = "reviewer@example.com", password: str | None = None,
                 token: str | None = None) -> LabelStudioServer:
    """Start Label Studio and wait until it answers ``/health`` and accepts the token; raises RuntimeError
    (with the end of the server's log) when it does not within ``timeout`` seconds."""
    executable = ensure_installed()
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / DB_NAME).exists():
        shutil.copyfile(LS_VENV / TEMPLATE_DB, data_dir / DB_NAME)
    port = port or free_port()
    password = password or secrets.token_urlsafe(12)
    token = token or secrets.token_hex(20)
    log_path = data_dir / "label-studio.log"
    env = server_environment(data_dir, document_root, username, password, token)
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(executable), "start", "--no-browser", "--port", str(port), "--internal-host", "127.0.0.1"],
            cwd=data_dir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    server = LabelStudioServer(url=url, token=token, username=username, password=password, data_dir=data_dir,
                               document_root=document_root, log_path=log_path, process=process)
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"Label Studio exited with code {process.returncode} while starting:\n"
                               f"{server.log_tail()}")
        if _get(f"{url}/health") == 200 and _get(f"{url}/api/current-user/whoami", token) == 200:
            server.start_seconds = time.monotonic() - started
            return server
        time.sleep(1.0)
    server.stop()
    raise RuntimeError(f"Label Studio did not answer on {url} within {timeout:.0f} s:\n{server.log_tail()}")


if __name__ == "__main__":
    begin = time.monotonic()
    ensure_installed(quiet=False)
    print(f"installed in {time.monotonic() - begin:.1f} s")
    folder = Path(tempfile.mkdtemp(prefix="label-studio-"))
    running = start_server(folder / "data", folder)
    print(f"Label Studio {LS_VERSION} at {running.url} (started in {running.start_seconds:.1f} s), "
          f"user {running.username} / {running.password}, token {running.token}")
    try:
        running.process.wait()
    except KeyboardInterrupt:
        running.stop()

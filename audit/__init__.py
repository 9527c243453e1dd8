"""label-audit: audit the labels of an image dataset.

The Python API mirrors the command line::

    import audit
    config = audit.build_config(overrides={"source": {"kind": "folder", "path": "data/train"}})
    results = audit.run(config)          # writes reports/<run-name>/
    results.samples.sort_values("mistakes_label_quality").head()
    same = audit.load_run(results.path)  # reports, FiftyOne and the gate read this, never recompute

Heavy libraries (torch, open_clip, umap, fiftyone) are imported only by the stages that use them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from audit.config import AuditConfig, ConfigError, build_config
from audit.results import RunResults

if TYPE_CHECKING:
    from pathlib import Path

try:
    __version__ = version("label-audit")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"


def run(config: AuditConfig, progress: bool = True) -> RunResults:
    """Run the whole audit described by ``config`` and return its results (see :mod:`audit.runner`)."""
    from audit.runner import run as _run

    return _run(config, progress=progress)


def load_run(path: str | Path) -> RunResults:
    """Open a run folder written earlier."""
    return RunResults.load(path)


__all__ = ["AuditConfig", "ConfigError", "RunResults", "__version__", "build_config", "load_run", "run"]

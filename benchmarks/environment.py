"""Where and with what a benchmark ran (machine, load average, package versions): recorded beside every result,
because timings are only comparable on the same, quiet machine."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def load_average() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                            if line.startswith("model name")), None)
        info["cpu_bf16"] = sorted({f for f in ("amx_bf16", "avx512_bf16", "amx_int8") if f in cpuinfo})
        meminfo = Path("/proc/meminfo").read_text().split()
        info["memory_gib"] = round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1)
    except (OSError, ValueError, StopIteration):
        pass
    return info


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for package in ("label-audit", "torch", "open-clip-torch", "pillow", "umap-learn", "cleanlab", "fiftyone",
                    "fiftyone-brain", "scikit-learn", "numpy"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out

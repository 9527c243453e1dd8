"""The weekly self-contained HTML quality report of a run, and its suspects CSV (the review queue).

``render_report(run_dir, baseline_dir=None)`` reads a run folder written by ``label-audit run`` and writes
``index.html`` and ``suspects.csv`` beside it; nothing is recomputed. See :mod:`audit.report.html`.
"""

from __future__ import annotations

from audit.report.html import ReportLimits, render_report

__all__ = ["ReportLimits", "render_report"]

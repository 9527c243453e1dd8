"""Benchmarks of label-audit on real data (run as modules, e.g. ``python -m benchmarks.label_errors``)."""

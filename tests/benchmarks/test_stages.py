"""The stage benchmark's own measures (UMAP quality) and the carrying over of parts a partial rerun skips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.__main__ import carry_over
from benchmarks.stages import class_purity, neighbourhood_overlap


def test_neighbourhood_overlap_on_hand_made_maps() -> None:
    line = np.column_stack([np.arange(10.0), np.zeros(10)])
    assert neighbourhood_overlap(line, line * 3 + 5, np.arange(10), k=2) == 1.0  # same neighbours, other scale
    swapped = line.copy()
    swapped[[0, 9]] = swapped[[9, 0]]  # points 0 and 9 trade places
    # Point 1's 2 nearest: {0, 2} before, {2, 3} after -> 1 of 2 kept; point 0: {1, 2} before, {8, 7} after -> 0.
    assert neighbourhood_overlap(line, swapped, np.array([1]), k=2) == 0.5
    assert neighbourhood_overlap(line, swapped, np.array([0]), k=2) == 0.0


def test_class_purity_counts_neighbours_of_the_same_class() -> None:
    points = np.array([[0.0, 0], [0.1, 0], [0.2, 0], [5, 0], [5.1, 0], [5.2, 0]])
    classes = np.array([0, 0, 1, 1, 1, 1])
    # point 0: neighbours 1 (same), 2 (other) -> 0.5; point 3: neighbours 4, 5 (same) -> 1.0
    assert class_purity(points, classes, np.array([0, 3]), k=2) == pytest.approx(0.75)


def test_a_partial_rerun_keeps_the_other_parts_with_their_origin(tmp_path) -> None:
    previous = {"command": "python -m benchmarks", "created_at": "2026-01-01T00:00:00+00:00",
                "speed": {"images": 1}, "detection": {}, "stages": [{"old": True}]}
    (tmp_path / "bench.json").write_text(json.dumps(previous))
    results = {"stages": [{"new": True}]}
    carry_over(results, tmp_path / "bench.json", ["speed", "detection", "objects"])
    assert results["stages"] == [{"new": True}] and results["speed"] == {"images": 1}
    assert "objects" not in results and "detection" not in results  # absent, or empty, parts are not invented
    assert results["carried"] == {"speed": {"command": "python -m benchmarks",
                                            "created_at": "2026-01-01T00:00:00+00:00"}}

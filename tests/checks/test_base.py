"""The contract every check runs under (audit/checks/base.py): run_check names a broken check, keeps a check's own
bad-input error, and refuses results that break the contract."""

from __future__ import annotations

import io
from typing import ClassVar

import pandas as pd
import pytest

from audit.checks.base import Check, CheckContext, CheckError, CheckResult, run_check
from audit.progress import Progress

SAMPLES = pd.DataFrame({"filepath": ["a.png", "b.png"], "label": ["x", "y"], "split": "all", "readable": True},
                       index=pd.Index(["s1", "s2"], name="sample_id"))


def _check(behaviour):
    class Probe(Check):
        name: ClassVar[str] = "probe"

        def run(self, context: CheckContext) -> CheckResult:
            return behaviour(context)

    return Probe


def _run(behaviour):
    stream = io.StringIO()
    result = run_check(_check(behaviour), CheckContext(samples=SAMPLES, class_names=["x", "y"]),
                       Progress(stream=stream))
    return result, stream.getvalue()


def test_a_good_result_passes_and_gets_its_stage_line():
    result, log = _run(lambda c: CheckResult("probe", pd.DataFrame({"probe_n": [1, 2]}, index=c.samples.index), {}))
    assert result.samples["probe_n"].tolist() == [1, 2] and "check probe" in log


def test_a_crash_fails_the_run_with_the_checks_name():
    def crash(context):
        raise KeyError("column")

    with pytest.raises(CheckError, match=r"check 'probe' failed: KeyError"):
        _run(crash)


def test_a_bad_input_error_stays_the_checks_own():
    def refuse(context):
        raise ValueError("labels are missing")

    with pytest.raises(ValueError, match="labels are missing"):
        _run(refuse)


def test_results_that_break_the_contract_are_refused():
    with pytest.raises(CheckError, match="without the 'probe_' prefix"):
        _run(lambda c: CheckResult("probe", pd.DataFrame({"n": [1, 2]}, index=c.samples.index), {}))
    with pytest.raises(CheckError, match="index is not the run's sample ids"):
        _run(lambda c: CheckResult("probe", pd.DataFrame({"probe_n": [1]}, index=["s1"]), {}))

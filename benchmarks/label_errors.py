"""How well the mistakes check finds real, human-validated label errors (CIFAR-10 and MNIST test sets).

Usage::

    python -m benchmarks.label_errors [--quick] [--out benchmarks/results/label_errors.json]

Data: ``<shared>/data/label-errors`` (``$LABEL_AUDIT_SHARED``, default ``<repo>/../shared``), from
cleanlab/label-errors (Northcutt et al., NeurIPS 2021): a model's out-of-sample predicted probabilities on each
10,000-image test set, the shipped labels, and the crowd verdicts on the candidates confident learning flagged.
A candidate is a **validated error** when fewer than 3 of 5 workers chose the given label (54 on CIFAR-10,
15 on MNIST, the paper's counts); the other reviewed candidates (221 and 85) were judged fine.

No images are used: each test set becomes a sample table with labels ``"0"``..``"9"`` and its probabilities go
through the check's bring-your-own-probabilities path, exactly as a user's ``--pred-probs`` file would.

Reported per dataset and method: validated errors flagged, total flags, reviewed-fine candidates flagged, the
precision and F1 **over reviewed candidates** (flags nobody reviewed are left out, which flatters a method with
many flags), and the AUROC and average precision of the method's score (lower label quality = more suspicious)
at ranking validated errors above the fine candidates. Methods: label-audit's defaults; the top 250 of the
default's flag ranking (issue 17's flag budget for CIFAR-10; its score column is the defaults'); cleanlab's defaults
(``find_label_issues(labels, pred_probs)`` flags, ``get_label_quality_scores(labels, pred_probs)`` ranking);
label-audit with the rule it had before issue 17 (``filter_by=["prune_by_noise_rate", "low_normalized_margin"]``);
and label-audit with ``filter_by="predicted_neq_given"`` (flag every sample whose predicted class differs from
its label), the setting for maximum recall at many more flags. label-audit's score is cleanlab's default
(self-confidence), so AUROC and AP are cleanlab's too: the comparison is of flag rules. ``versus_cleanlab``
says what label-audit's defaults flag that cleanlab's do not, and the reverse, split into validated errors,
reviewed-fine candidates and unreviewed samples.

Caveat: the candidates are the samples confident learning flagged (the paper's method, close to cleanlab's
rules), so a rule that reproduces that candidate set finds every validated error by construction. These two
test sets tune the defaults (see :mod:`benchmarks.heldout`); they are not held out.

Among the candidates the ranking task is hard by construction: all of them already look wrong to the model, so
AUROC near 0.6 is the state of the art here.

``--quick`` runs the same full benchmark: it is two 10,000 x 10 arrays and takes about a second, so CI runs it
as is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "label_errors.json"
DATASETS = {"cifar10": "CIFAR-10 test set", "mnist": "MNIST test set"}
RULE_BEFORE_ISSUE_17 = ["prune_by_noise_rate", "low_normalized_margin"]
FLAG_BUDGET = 250  # issue 17's aim for CIFAR-10: at most this many flags
TOP_OF_RANKING = f"label-audit, top {FLAG_BUDGET} of its flag ranking"
VALIDATED_IF_GIVEN_BELOW = 3  # of 5 workers chose the given label alone: the paper's definition


class BenchmarkDataError(FileNotFoundError):
    """The label-errors data is not where the benchmark looks for it."""


def data_dir() -> Path:
    """``$LABEL_AUDIT_SHARED/data/label-errors``, defaulting to the checkout's sibling ``shared/`` folder."""
    shared = Path(os.environ.get("LABEL_AUDIT_SHARED", REPO.parent / "shared"))
    return shared / "data" / "label-errors"


def load_dataset(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Predicted probabilities ``(n, 10)``, shipped labels ``(n,)`` and the reviewed candidates
    (``id``, ``validated_error``) of one test set."""
    files = [folder / f"{name}_test_set_pyx.npy", folder / f"{name}_test_set_original_labels.npy",
             folder / f"{name}_mturk.json"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise BenchmarkDataError(f"label-errors data not found: {missing[0]} (set LABEL_AUDIT_SHARED)")
    pred_probs = np.load(files[0])
    labels = np.load(files[1]).astype(int)
    reviewed = json.loads(files[2].read_text(encoding="utf-8"))
    candidates = pd.DataFrame({
        "id": [int(item["id"]) for item in reviewed],
        "validated_error": [item["mturk"]["given"] < VALIDATED_IF_GIVEN_BELOW for item in reviewed],
    })
    return pred_probs, labels, candidates


def run_label_audit(pred_probs: np.ndarray, labels: np.ndarray, name: str,
                    params: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Run the mistakes check on probabilities alone; returns flags, label quality and the check's metrics."""
    from audit.checks.base import CheckContext
    from audit.checks.mistakes import MistakesCheck

    class_names = [str(c) for c in range(pred_probs.shape[1])]
    samples = pd.DataFrame(
        {"filepath": "", "label": [str(v) for v in labels], "split": "test", "readable": True},
        index=pd.Index([f"{name}/{i:05d}" for i in range(len(labels))], name="sample_id"),
    )
    context = CheckContext(samples=samples, class_names=class_names, pred_probs=pred_probs, params=params or {})
    result = MistakesCheck().run(context)
    return (result.samples["mistakes_is_issue"].to_numpy(bool), result.samples["mistakes_label_quality"].to_numpy(),
            result.metrics)


def run_cleanlab_defaults(pred_probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's own defaults: ``find_label_issues`` flags and ``get_label_quality_scores`` ranking."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    return find_label_issues(labels, pred_probs, n_jobs=1), get_label_quality_scores(labels, pred_probs)


def score(flags: np.ndarray, quality: np.ndarray, candidates: pd.DataFrame, seconds: float) -> dict[str, Any]:
    """Recall of validated errors among the flags, and ranking quality among the reviewed candidates."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    ids = candidates["id"].to_numpy()
    truth = candidates["validated_error"].to_numpy(bool)
    suspicion = -quality[ids]
    found, reviewed_flags = int(flags[ids[truth]].sum()), int(flags[ids].sum())
    precision = found / reviewed_flags if reviewed_flags else 0.0
    recall = found / int(truth.sum())
    return {
        "validated_flagged": found,
        "validated_recall": recall,
        "total_flags": int(flags.sum()),
        "reviewed_flags": reviewed_flags,
        "fine_candidates_flagged": int(flags[ids[~truth]].sum()),
        "precision_over_reviewed": precision,
        "f1_over_reviewed": 2 * precision * recall / (precision + recall) if found else 0.0,
        "auroc": float(roc_auc_score(truth, suspicion)),
        "average_precision": float(average_precision_score(truth, suspicion)),
        "seconds": round(seconds, 3),
    }


def versus(ours: np.ndarray, theirs: np.ndarray, candidates: pd.DataFrame) -> dict[str, dict[str, int]]:
    """The flags only one of two methods raises, split into validated errors, fine candidates and unreviewed."""
    validated = np.zeros(len(ours), bool)
    reviewed = np.zeros(len(ours), bool)
    validated[candidates["id"].to_numpy()[candidates["validated_error"].to_numpy(bool)]] = True
    reviewed[candidates["id"].to_numpy()] = True

    def split(only: np.ndarray) -> dict[str, int]:
        return {"flags": int(only.sum()), "validated": int((only & validated).sum()),
                "fine": int((only & reviewed & ~validated).sum()), "unreviewed": int((only & ~reviewed).sum())}

    return {"only_label_audit": split(ours & ~theirs), "only_cleanlab": split(theirs & ~ours)}


def run_benchmark(folder: Path | None = None) -> dict[str, Any]:
    """Every dataset and method; a JSON-safe dict (see the module docstring for what each number means)."""
    import cleanlab
    import sklearn

    from audit.checks.mistakes import DEFAULTS

    folder = folder or data_dir()
    results: dict[str, Any] = {
        "benchmark": "label-errors",
        "source": "cleanlab/label-errors (Northcutt, Athalye, Mueller, NeurIPS 2021 Datasets and Benchmarks)",
        "validated_error": f"a reviewed candidate for which fewer than {VALIDATED_IF_GIVEN_BELOW} of 5 workers "
                           "chose the given label",
        "score": "lower label quality = more suspicious; AUROC/AP over the reviewed candidates",
        "label_audit_defaults": {"filter_by": DEFAULTS["filter_by"], "quality_method": "self_confidence"},
        "versions": {"cleanlab": cleanlab.__version__, "scikit-learn": sklearn.__version__,
                     "python": sys.version.split()[0]},
        "datasets": {},
    }
    for name, title in DATASETS.items():
        pred_probs, labels, candidates = load_dataset(folder, name)
        methods: dict[str, Any] = {}
        start = time.perf_counter()
        ours, quality, metrics = run_label_audit(pred_probs, labels, name)
        methods["label-audit (defaults)"] = score(ours, quality, candidates, time.perf_counter() - start)
        start = time.perf_counter()
        methods[TOP_OF_RANKING] = score(top_of_ranking(pred_probs, labels, FLAG_BUDGET), quality, candidates,
                                        time.perf_counter() - start)
        start = time.perf_counter()
        theirs, quality = run_cleanlab_defaults(pred_probs, labels)
        methods["cleanlab defaults"] = score(theirs, quality, candidates, time.perf_counter() - start)
        start = time.perf_counter()
        flags, quality, _ = run_label_audit(pred_probs, labels, name, {"filter_by": RULE_BEFORE_ISSUE_17})
        methods["label-audit, rule before issue 17"] = score(flags, quality, candidates, time.perf_counter() - start)
        start = time.perf_counter()
        flags, quality, _ = run_label_audit(pred_probs, labels, name, {"filter_by": "predicted_neq_given"})
        methods["label-audit filter_by=predicted_neq_given"] = score(
            flags, quality, candidates, time.perf_counter() - start)
        results["datasets"][name] = {
            "title": title,
            "n_samples": len(labels),
            "n_candidates": len(candidates),
            "n_validated_errors": int(candidates["validated_error"].sum()),
            "label_health": metrics["label_health"],
            "methods": methods,
            "versus_cleanlab": versus(ours, theirs, candidates),
        }
    return results


def top_of_ranking(pred_probs: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` samples of the default rule's ranking (:func:`audit.checks.flag_rule.noise_ranking`) that it
    could flag (most likely class not the label): what the default would flag if its count were ``n``."""
    from audit.checks.flag_rule import noise_ranking

    ranked, _, _, disagrees, _ = noise_ranking(labels, pred_probs)
    flags = np.zeros(len(labels), dtype=bool)
    flags[ranked[disagrees[ranked]][:n]] = True
    return flags


def to_markdown(results: dict[str, Any]) -> str:
    """One table: a row per dataset and method."""
    lines = [
        "| dataset | method | validated errors flagged | total flags | fine candidates flagged | "
        "precision / F1 over reviewed | AUROC | AP |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for data in results["datasets"].values():
        for method, m in data["methods"].items():
            lines.append(
                f"| {data['title']} | {method} | {m['validated_flagged']} / {data['n_validated_errors']} | "
                f"{m['total_flags']} | {m['fine_candidates_flagged']} / "
                f"{data['n_candidates'] - data['n_validated_errors']} | "
                f"{m['precision_over_reviewed']:.3f} / {m['f1_over_reviewed']:.3f} | {m['auroc']:.3f} | "
                f"{m['average_precision']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.label_errors", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="CI mode; identical to the full run, which already takes about a second")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="JSON results file; a Markdown table is written beside it (.md)")
    args = parser.parse_args(argv)
    try:
        results = run_benchmark()
    except BenchmarkDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results["quick"] = bool(args.quick)
    table = to_markdown(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table, end="")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Held-out evaluation of the mistakes check: tuning sets choose the defaults, held-out sets only report them.

Usage::

    python -m benchmarks.heldout [--quick] [--no-fiftyone] [--out benchmarks/results/heldout.json]

**The rule.** label-audit's defaults (the flag rule, the ranking score, the classifier and its settings) are
chosen on the **tuning** sets only. The **held-out** sets are run to report those defaults and never to choose
between candidates. A default changed because of a held-out number makes that set a tuning set: move it to
``TUNING`` in this module and add a new held-out set (another seed or noise structure) in its place. The JSON
and Markdown record the role of every set.

How the current defaults were chosen (issue 17), in three rounds; after each, the held-out seeds that had been
looked at became tuning seeds and new ones were held out.

1. The low-margin rule and the refit, on the symmetric and pairs sets at seeds 0-2, then every structure at
   seeds 0-2 and 100, and the human-validated CIFAR-10 / MNIST errors (:mod:`benchmarks.label_errors`). Held
   out, seeds 101-103: behind cleanlab's defaults on 7 of 36 sets, mostly where confusions concentrate on a
   few class pairs.
2. The noise-posterior rule (:func:`audit.checks.flag_rule.noise_posterior`) and its refit, on seeds 0-2 and
   100-103 of every structure without annotators (probabilities cached, about 40 rankings and counts compared)
   and the validated errors. Held out, seeds 104-106: F1 >= 0.95 on 25 of 36 sets, behind cleanlab on 3 (two
   shared-annotator sets, by 0.003 and 0.007; one long-tailed set), the shared-annotator sets far below 0.95
   (precision 0.98, recall 0.63: too few flags).
3. The count for an audited consensus (``consensus=True``), on the shared-annotator sets of seeds 0-2 and
   100-103 (mean F1 0.830 -> 0.945 there).

Each round's results stay readable: round 1 is ``git show 5f1241e:benchmarks/results/heldout.md``, round 2 is
``benchmarks/results/history/heldout-round2.md`` (and ``.json``), the same command before the consensus count.

Seeds 107-109 of every structure are held out: no number from them was seen before these defaults were fixed.

**Data: real images through the user's path.** sklearn's 1,797 real 8x8 digit scans are written as PNGs (by
:func:`audit.demo.build_demo_dataset`, 32x32 grey), each set writes a manifest (and an annotations CSV when it
has annotators) over those files, and :func:`audit.runner.run` audits it with ``embedder: pixels``, as
``label-audit run --manifest m.csv [--annotations a.csv] --embedder pixels --no-report`` would (projection off:
it does not change the audit). The embedding cache is shared, so the images are embedded once. Every peer then
gets the same inputs: the audited labels, the out-of-sample probabilities the run wrote (``pred_probs.npy``)
and its embeddings.

Noise structures (the truth is each sample's real digit; a sample is wrong when its audited label differs):

* ``symmetric`` (a share of samples gets a uniformly chosen other digit) and ``pairs`` (the confusable
  partner: 1<->7, 3<->8, 4<->9, 5<->6, 0<->2) at 5, 10, 20%: the demo's noise;
* ``look-alike``: one-directional class-conditional confusions at class-specific rates
  (1->7 fastest, then 3->8, 4->9, 5->6, 7->1, then 8->3, 9->4, 6->5; 0 and 2 untouched), scaled to 5, 10, 20%
  of the samples (at 20%, 40% of the 1s are labelled 7);
* ``shared annotator error``: three annotators (5, 15, 30% random errors of their own, each labels
  80% of the samples) who all make the same systematic confusions (30% of the 4s are a 9 to everyone, 25% of
  the 1s a 7, 20% of the 3s an 8); the shipped label is the majority vote and label-audit audits its CROWDLAB
  consensus (about 9% wrong);
* ``long-tailed``: class sizes falling geometrically from 100% to 10% of the digits (imbalance 10,
  about 700 samples; which digit is rare changes with the seed), with symmetric or look-alike noise at 10%.

Every structure runs at the tuning seeds 0, 1, 2, 100 and the held-out seeds 101, 102, 103.

Methods, on the same probabilities: label-audit's defaults (the run's own flags and ``mistakes_label_quality``),
cleanlab ``find_label_issues`` / ``get_label_quality_scores`` defaults, cleanlab ``Datalab`` label issues (with
the embeddings as features) and FiftyOne Brain ``compute_mistakenness`` (flag: mistakenness > 0.5) -- the
helpers of :mod:`benchmarks.detection`. Three diagnostic rows: label-audit's previous default
(``low_margin_calibrated_count``) on the same probabilities; and, on sets without annotators, the rule before
issue 17 (cleanlab's ``prune_by_noise_rate`` OR ``low_normalized_margin``) and today's rule without the refit,
both on the single-fit probabilities (:func:`audit.checks.predictions.cross_validated_pred_probs` with
``refit=False``, which is what the pipeline computed before the refit existed). Metrics: precision, recall and
F1 of the flags against the truth, AUROC and average precision of the score (higher = more suspicious).

``--quick`` (CI) runs one held-out seed of 8 structures (no tuning sets, no FiftyOne: its MongoDB writes take
longer than the audit) in about half a minute on 2 cores. The full form runs all 221 sets, FiftyOne on the
held-out ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "heldout.json"
TUNING_SEEDS = (0, 1, 2, 100, 101, 102, 103, 104, 105, 106)
HELDOUT_SEEDS = (107, 108, 109)
NOISE_LEVELS = (0.05, 0.10, 0.20)
# true digit -> (label it is confused with, relative rate); rates are scaled to the set's overall noise level
LOOKALIKE = {1: (7, 2.5), 3: (8, 2.0), 4: (9, 2.0), 5: (6, 1.5), 7: (1, 1.5), 8: (3, 1.0), 9: (4, 1.0), 6: (5, 1.0)}
# true digit -> (label every annotator gives instead, share of that digit's samples)
SHARED_CONFUSIONS = {4: (9, 0.30), 1: (7, 0.25), 3: (8, 0.20)}
LONG_TAIL_IMBALANCE = 10.0
ANNOTATOR_COVERAGE = 0.8
LABEL_AUDIT = "label-audit"
CLEANLAB = "cleanlab find_label_issues"
PEERS = [CLEANLAB, "cleanlab Datalab", "FiftyOne compute_mistakenness"]
BEFORE = "label-audit rule before issue 17 (single fit)"
NO_REFIT = "label-audit rule, single fit (no refit)"
PREVIOUS = "label-audit previous default (low margin, calibrated count)"
TARGET_F1 = 0.95
COLUMNS = ("precision", "recall", "f1", "auroc", "average_precision")


@dataclass(frozen=True)
class NoiseSet:
    """One benchmark set: a noise structure at a level and seed, and whether it may be used to choose defaults."""

    structure: str  # symmetric | pairs | look-alike | shared annotator error | long-tailed symmetric | ...
    noise: float
    seed: int
    role: str  # "tuning" or "held-out"

    @property
    def name(self) -> str:
        return f"{self.group}, seed {self.seed}"

    @property
    def group(self) -> str:
        """The set without its seed: results are summarised over seeds per group."""
        return f"{self.structure} {self.noise:.0%}" if self.noise else self.structure


def _sets(seeds: tuple[int, ...], role: str) -> list[NoiseSet]:
    return ([NoiseSet(kind, noise, seed, role)
             for kind in ("symmetric", "pairs", "look-alike") for noise in NOISE_LEVELS for seed in seeds]
            + [NoiseSet("shared annotator error", 0.0, seed, role) for seed in seeds]
            + [NoiseSet(kind, 0.10, seed, role)
               for kind in ("long-tailed symmetric", "long-tailed look-alike") for seed in seeds])


TUNING = _sets(TUNING_SEEDS, "tuning")
HELDOUT = _sets(HELDOUT_SEEDS, "held-out")
QUICK = [s for s in HELDOUT if s.seed == HELDOUT_SEEDS[0]
         and (s.noise == 0.10 or s.structure in ("look-alike", "shared annotator error"))]


# ------------------------------------------------------------------------------------------------ noise


def _symmetric(true: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    given = true.copy()
    wrong = rng.random(len(true)) < noise
    given[wrong] = (true[wrong] + rng.integers(1, 10, wrong.sum())) % 10
    return given


def _lookalike(true: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``round(rate_c * n_c)`` samples of each source digit ``c`` get its look-alike label."""
    given = true.copy()
    counts = np.bincount(true, minlength=10)
    scale = noise * len(true) / sum(weight * counts[c] for c, (_, weight) in LOOKALIKE.items())
    for digit, (confused_with, weight) in LOOKALIKE.items():
        members = np.flatnonzero(true == digit)
        chosen = rng.choice(members, round(min(weight * scale, 0.45) * len(members)), replace=False)
        given[chosen] = confused_with
    return given


def _demo_noise(true: np.ndarray, kind: str, noise: float, seed: int) -> np.ndarray:
    """The demo's own noise (:func:`audit.demo.build_demo_dataset`, same random stream) on these digits."""
    from audit.demo import _wrong_classes

    rng = np.random.default_rng(seed)
    wrong = rng.random(len(true)) < noise
    return _wrong_classes(true.astype(str), wrong, kind, rng).astype(int)


def _long_tail_rows(true: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Class sizes falling geometrically by ``LONG_TAIL_IMBALANCE`` from the most to the least common digit."""
    order = rng.permutation(10)
    largest = np.bincount(true).min()
    rows = []
    for rank, digit in enumerate(order):
        size = round(largest * LONG_TAIL_IMBALANCE ** (-rank / 9))
        rows.append(rng.choice(np.flatnonzero(true == digit), size, replace=False))
    return np.sort(np.concatenate(rows))


def _annotations(true: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, pd.DataFrame]:
    """Three annotators sharing systematic confusions; returns the majority-vote labels and the long table."""
    from audit.demo import ANNOTATOR_ERROR_RATES

    seen_as = true.copy()
    for digit, (confused_with, share) in SHARED_CONFUSIONS.items():
        members = np.flatnonzero(true == digit)
        seen_as[rng.choice(members, round(share * len(members)), replace=False)] = confused_with
    rows, shipped = [], np.empty(len(true), dtype=int)
    names = list(ANNOTATOR_ERROR_RATES)
    for i in range(len(true)):
        labelled = [a for a in names if rng.random() < ANNOTATOR_COVERAGE] or [names[rng.integers(len(names))]]
        votes = []
        for annotator in labelled:
            label = seen_as[i]
            if rng.random() < ANNOTATOR_ERROR_RATES[annotator]:
                label = (label + rng.integers(1, 10)) % 10
            votes.append(int(label))
            rows.append((i, annotator, int(label)))
        counts = np.bincount(votes, minlength=10)
        tied = np.flatnonzero(counts == counts.max())
        shipped[i] = tied[rng.integers(len(tied))]
    return shipped, pd.DataFrame(rows, columns=["row", "annotator", "label"])


def make_labels(noise_set: NoiseSet, true: np.ndarray) -> tuple[np.ndarray, np.ndarray, pd.DataFrame | None]:
    """Rows of the digits the set uses, their shipped labels, and the annotations (row, annotator, label)."""
    rng = np.random.default_rng(noise_set.seed)
    structure = noise_set.structure
    if structure in ("symmetric", "pairs"):
        return np.arange(len(true)), _demo_noise(true, structure, noise_set.noise, noise_set.seed), None
    if structure == "look-alike":
        return np.arange(len(true)), _lookalike(true, noise_set.noise, rng), None
    if structure == "shared annotator error":
        shipped, annotations = _annotations(true, rng)
        return np.arange(len(true)), shipped, annotations
    if structure.startswith("long-tailed"):
        rows = _long_tail_rows(true, rng)
        noisy = _lookalike if structure.endswith("look-alike") else _symmetric
        return rows, noisy(true[rows], noise_set.noise, rng), None
    raise ValueError(f"unknown noise structure {structure!r}")


# ------------------------------------------------------------------------------------------------ one set


def _previous_rule(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    from cleanlab.filter import find_label_issues

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1)
                | find_label_issues(labels, probs, filter_by="low_normalized_margin", n_jobs=1))


def run_set(noise_set: NoiseSet, images: pd.DataFrame, root: Path, with_fiftyone: bool) -> dict[str, Any]:
    """Audit one set end to end, then score label-audit and the peers on the same probabilities."""
    from audit.checks.flag_rule import low_margin_calibrated_count, noise_posterior
    from audit.checks.predictions import cross_validated_pred_probs
    from audit.config import build_config
    from audit.runner import run
    from benchmarks.detection import cleanlab_defaults, datalab_defaults, fiftyone_mistakenness, flag_metrics

    true = images["true_label"].to_numpy(int)
    rows, shipped, annotations = make_labels(noise_set, true)
    slug = f"{noise_set.structure.replace(' ', '-')}-{round(noise_set.noise * 100)}-{noise_set.seed}"
    ids = images.index[rows]
    manifest = root / f"{slug}.csv"
    pd.DataFrame({"sample_id": ids, "filepath": images["filepath"].to_numpy()[rows],
                  "label": shipped.astype(str)}).to_csv(manifest, index=False)
    source: dict[str, Any] = {"kind": "manifest", "path": manifest}
    if annotations is not None:
        source["annotations"] = root / f"{slug}-annotations.csv"
        pd.DataFrame({"sample": ids[annotations["row"].to_numpy()], "annotator": annotations["annotator"],
                      "label": annotations["label"].astype(str)}).to_csv(source["annotations"], index=False)
    config = build_config(overrides={
        "source": source, "embedder": {"kind": "pixels", "cache_dir": root / "cache"},
        "output_dir": root / "runs", "run_name": slug, "seed": noise_set.seed, "report": False,
        "projection": {"enabled": False},
    })
    started = time.perf_counter()
    result = run(config, progress=False)
    audit_seconds = time.perf_counter() - started

    samples = result.samples
    keep = samples["readable"].to_numpy(bool) & samples["mistakes_label_quality"].notna().to_numpy()
    class_names = list(result.class_names)
    code = {c: i for i, c in enumerate(class_names)}
    labels = samples["mistakes_audited_label"][keep].map(code).to_numpy(int)
    truth = labels != np.array([code.get(str(t), -1) for t in images.loc[samples.index[keep], "true_label"]])
    probs, embeddings = result.pred_probs[keep], result.embeddings[keep]
    methods: dict[str, Any] = {LABEL_AUDIT: {
        **flag_metrics(truth, samples["mistakes_is_issue"][keep].to_numpy(bool),
                       1.0 - samples["mistakes_label_quality"][keep].to_numpy(float)),
        "seconds": audit_seconds}}
    peers = {CLEANLAB: lambda: cleanlab_defaults(labels, probs),
             "cleanlab Datalab": lambda: datalab_defaults(labels, probs, embeddings)}
    if with_fiftyone:
        peers["FiftyOne compute_mistakenness"] = lambda: fiftyone_mistakenness(
            labels, probs, class_names, samples["filepath"][keep].tolist())
    methods[PREVIOUS] = flag_metrics(truth, low_margin_calibrated_count(labels, probs),
                                     1.0 - probs[np.arange(len(labels)), labels])
    for name, method in peers.items():
        started = time.perf_counter()
        flags, suspicion = method()
        methods[name] = {**flag_metrics(truth, flags, suspicion), "seconds": time.perf_counter() - started}
    if annotations is None:  # the pipeline audited the shipped labels with probabilities it fitted itself
        single, *_ = cross_validated_pred_probs(embeddings, labels, len(class_names), seed=noise_set.seed,
                                                refit=False)
        suspicion = 1.0 - single[np.arange(len(labels)), labels]
        methods[BEFORE] = flag_metrics(truth, _previous_rule(labels, single), suspicion)
        methods[NO_REFIT] = flag_metrics(truth, noise_posterior(labels, single), suspicion)
    mistakes = result.check_metrics("mistakes")
    return {**asdict(noise_set), "name": noise_set.name, "group": noise_set.group,
            "n_samples": int(keep.sum()), "n_wrong": int(truth.sum()), "wrong_rate": float(truth.mean()),
            "ceiling_f1": best_cut_f1(truth, labels, probs),
            "audited": mistakes.get("audited"), "pred_probs": mistakes.get("pred_probs_source"),
            "cv_accuracy": mistakes.get("cv_accuracy"), "embedder": result.summary["embedder"]["name"],
            "methods": methods}


def best_cut_f1(truth: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> float:
    """The best F1 that label-audit's flag ranking (:func:`audit.checks.flag_rule.noise_ranking`, without the
    samples whose label is their most likely class, which the rule never flags) reaches at any cut: what a
    perfect estimate of the count could give the default rule on these probabilities."""
    from audit.checks.flag_rule import noise_ranking

    ranked, _, _, disagrees, _ = noise_ranking(labels, probs)
    hits = np.cumsum((truth & disagrees)[ranked])
    flagged = np.cumsum(disagrees[ranked])
    return float((2 * hits / (flagged + truth.sum())).max())


# ------------------------------------------------------------------------------------------------ all sets


def digit_images(root: Path) -> pd.DataFrame:
    """The 1,797 digit scans written once as PNGs; indexed by sample id with ``filepath`` and ``true_label``."""
    from audit.demo import build_demo_dataset

    data = build_demo_dataset(root / "digits", noise=0.0, annotators=0, broken_files=False)
    manifest = pd.read_csv(data.manifest, dtype=str).set_index("sample_id")
    return pd.DataFrame({"filepath": [str((data.root / p).resolve()) for p in manifest["filepath"]],
                         "true_label": data.truth.loc[manifest.index, "true_label"].astype(int)},
                        index=manifest.index)


def run_benchmark(quick: bool = False, with_fiftyone: bool = True) -> dict[str, Any]:
    """Every set of the chosen form; a JSON-safe dict (see the module docstring)."""
    import cleanlab
    import sklearn

    from audit.checks.mistakes import DEFAULTS

    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    chosen = QUICK if quick else [*TUNING, *HELDOUT]
    with_fiftyone = with_fiftyone and not quick
    started = time.perf_counter()
    sets = []
    with tempfile.TemporaryDirectory(prefix="label-audit-heldout-") as tmp:
        images = digit_images(Path(tmp))
        for noise_set in chosen:
            sets.append(run_set(noise_set, images, Path(tmp), with_fiftyone and noise_set.role == "held-out"))
    results: dict[str, Any] = {
        "benchmark": "heldout",
        "command": "python -m benchmarks.heldout" + (" --quick" if quick else ""),
        "fiftyone": "held-out sets only" if with_fiftyone else "not run",
        "quick": quick,
        "rule": "defaults are chosen on the tuning sets only; held-out sets report them (module docstring)",
        "tuning_sets": sorted({s["group"] for s in sets if s["role"] == "tuning"}),
        "heldout_sets": sorted({s["group"] for s in sets if s["role"] == "held-out"}),
        "label_audit_defaults": {k: DEFAULTS[k] for k in ("filter_by", "folds", "knn_neighbors")},
        "versions": {"cleanlab": cleanlab.__version__, "scikit-learn": sklearn.__version__,
                     "python": sys.version.split()[0]},
        "sets": sets,
    }
    results["summary"] = summarise(sets)
    results["overall"] = overall(sets)
    results["acceptance"] = acceptance(sets)
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def summarise(sets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per role and group (a structure at a noise level): each method's metrics averaged over seeds, and the
    lowest F1 among the seeds."""
    rows = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in sets:
        groups.setdefault((s["role"], s["group"]), []).append(s)
    for (role, group), members in groups.items():
        methods = {}
        for name in members[0]["methods"]:
            values = [m["methods"][name] for m in members if name in m["methods"]]
            methods[name] = {c: float(np.mean([v[c] for v in values])) for c in (*COLUMNS, "n_flagged")}
            methods[name]["min_f1"] = float(min(v["f1"] for v in values))
        rows.append({"role": role, "group": group, "seeds": [m["seed"] for m in members],
                     "n_samples": float(np.mean([m["n_samples"] for m in members])),
                     "n_wrong": float(np.mean([m["n_wrong"] for m in members])),
                     "ceiling_f1": float(np.mean([m["ceiling_f1"] for m in members])), "methods": methods})
    return rows


def overall(sets: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per role and method: its mean F1 over the sets it ran on, label-audit's mean F1 over the same sets, and
    on how many of them label-audit's F1 is at least the method's."""
    out: dict[str, dict[str, Any]] = {}
    for role in ("tuning", "held-out"):
        members = [s for s in sets if s["role"] == role]
        out[role] = {}
        for name in dict.fromkeys(n for s in members for n in s["methods"]):
            ran = [s["methods"] for s in members if name in s["methods"]]
            out[role][name] = {"n_sets": len(ran), "mean_f1": float(np.mean([m[name]["f1"] for m in ran])),
                               "label_audit_mean_f1": float(np.mean([m[LABEL_AUDIT]["f1"] for m in ran])),
                               "label_audit_at_least": sum(m[LABEL_AUDIT]["f1"] >= m[name]["f1"] for m in ran)}
    return out


def acceptance(sets: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 17's acceptance facts on the held-out sets: F1 >= 0.95 and F1 >= cleanlab's defaults, set by set."""
    heldout = [s for s in sets if s["role"] == "held-out"]
    below_target = [s["name"] for s in heldout if s["methods"][LABEL_AUDIT]["f1"] < TARGET_F1]
    below_cleanlab = [s["name"] for s in heldout
                      if s["methods"][LABEL_AUDIT]["f1"] < s["methods"][CLEANLAB]["f1"]]
    f1 = [s["methods"][LABEL_AUDIT]["f1"] for s in heldout]
    return {"n_heldout_sets": len(heldout), "target_f1": TARGET_F1,
            "min_f1": min(f1) if f1 else None, "mean_f1": float(np.mean(f1)) if f1 else None,
            "below_target": below_target, "below_cleanlab": below_cleanlab}


# ------------------------------------------------------------------------------------------------ output


def _cell(value: float, best: float) -> str:
    return f"**{value:.3f}**" if abs(value - best) < 5e-4 else f"{value:.3f}"


def summary_table(results: dict[str, Any], role: str) -> str:
    """One row per group of the role: label-audit's precision / recall, F1 / AUROC / AP of every method on the
    same probabilities (mean over seeds; best of the row in bold), then the F1 of label-audit's previous default
    on the same probabilities and of the rule before issue 17."""
    names = [LABEL_AUDIT, *PEERS]
    lines = ["| set (seeds) | wrong | ceiling | label-audit P / R | " + " | ".join(names)
             + " | previous default | rule before issue 17 |",
             "| --- | --- | --- | --- |" + " --- |" * (len(names) + 2)]
    for row in results["summary"]:
        if row["role"] != role:
            continue
        methods = row["methods"]
        best = {c: max(m[c] for n, m in methods.items() if n in names) for c in ("f1", "auroc", "average_precision")}
        cells = []
        for name in names:
            if name not in methods:
                cells.append("—")
                continue
            m = methods[name]
            cells.append(" / ".join(_cell(m[c], best[c]) for c in ("f1", "auroc", "average_precision")))
        ours = methods[LABEL_AUDIT]
        seeds = ", ".join(str(s) for s in row["seeds"])
        before = f"{methods[BEFORE]['f1']:.3f}" if BEFORE in methods else "—"
        previous = f"{methods[PREVIOUS]['f1']:.3f}" if PREVIOUS in methods else "—"
        lines.append(f"| {row['group']} ({seeds}) | {row['n_wrong']:.0f} of {row['n_samples']:.0f} | "
                     f"{row['ceiling_f1']:.3f} | {ours['precision']:.3f} / {ours['recall']:.3f} | "
                     + " | ".join(cells) + f" | {previous} | {before} |")
    return "\n".join(lines) + "\n"


def sets_table(results: dict[str, Any]) -> str:
    """Every set: F1 of label-audit, cleanlab's defaults and the two diagnostic rows, and flag counts."""
    names = [LABEL_AUDIT, CLEANLAB, "cleanlab Datalab", "FiftyOne compute_mistakenness", PREVIOUS, NO_REFIT, BEFORE]
    lines = ["| role | set | wrong | ceiling | " + " | ".join(f"{n}: F1 (flags)" for n in names) + " |",
             "| --- | --- | --- | --- |" + " --- |" * len(names)]
    for s in results["sets"]:
        cells = [f"{s['methods'][n]['f1']:.3f} ({s['methods'][n]['n_flagged']})" if n in s["methods"] else "—"
                 for n in names]
        lines.append(f"| {s['role']} | {s['name']} | {s['n_wrong']} of {s['n_samples']} | {s['ceiling_f1']:.3f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_markdown(results: dict[str, Any]) -> str:
    accepted = results["acceptance"]
    out = [f"Command: `{results['command']}` ({results['seconds']:.0f} s). Cells: F1 of the flags / AUROC / "
           "average precision of the score (higher = more suspicious), mean over the seeds; every method gets the "
           "out-of-sample probabilities label-audit's run wrote, except the last column (the rule before issue 17 "
           "on the single-fit probabilities the pipeline computed then; — where the set has annotators). "
           "label-audit's score is cleanlab's self-confidence, as cleanlab's, so those two rank alike and differ "
           "in their flags only. Ceiling: the best F1 that flagging the top of label-audit's flag ranking (confident "
           "disagreements, then the noise posterior) reaches at any count, on the same probabilities. Previous "
           "default: label-audit's low-margin rule on the same probabilities.\n",
           "**Held-out sets** (never used to choose a default):\n", summary_table(results, "held-out")]
    if any(s["role"] == "tuning" for s in results["sets"]):
        out += ["**Tuning sets** (the defaults were chosen on these):\n", summary_table(results, "tuning")]
    out.append(
        f"Held-out acceptance: label-audit F1 >= {accepted['target_f1']} on "
        f"{accepted['n_heldout_sets'] - len(accepted['below_target'])} of {accepted['n_heldout_sets']} sets "
        f"(lowest {accepted['min_f1']:.3f}, mean {accepted['mean_f1']:.3f}); >= cleanlab's defaults on "
        f"{accepted['n_heldout_sets'] - len(accepted['below_cleanlab'])} of {accepted['n_heldout_sets']}."
        + (f" Below {accepted['target_f1']}: {'; '.join(accepted['below_target'])}." if accepted["below_target"]
           else "")
        + (f" Below cleanlab: {'; '.join(accepted['below_cleanlab'])}." if accepted["below_cleanlab"] else "")
        + "\n")
    for role, methods in results["overall"].items():
        if not methods:
            continue
        out.append(f"Mean F1, {role} sets: " + "; ".join(
            f"{name} {m['mean_f1']:.3f} against label-audit {m['label_audit_mean_f1']:.3f} over the same "
            f"{m['n_sets']} sets (label-audit at least as good on {m['label_audit_at_least']})"
            for name, m in methods.items() if name != LABEL_AUDIT) + ".\n")
    out += ["**Every set**:\n", sets_table(results)]
    return "\n".join(out)


def rerender(path: Path) -> str:
    """Recompute the summary and the Markdown of a results file from its per-set numbers (no audit is rerun)."""
    results = json.loads(path.read_text(encoding="utf-8"))
    results["summary"], results["overall"] = summarise(results["sets"]), overall(results["sets"])
    results["acceptance"] = acceptance(results["sets"])
    path.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    table = to_markdown(results)
    path.with_suffix(".md").write_text(table, encoding="utf-8")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.heldout", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed of each held-out structure (CI)")
    parser.add_argument("--no-fiftyone", action="store_true", help="leave FiftyOne's mistakenness out")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results file (default benchmarks/results/heldout.json, heldout-quick.json with "
                             "--quick); a Markdown file is written beside it (.md)")
    args = parser.parse_args(argv)
    out = args.out or (DEFAULT_OUT.with_name("heldout-quick.json") if args.quick else DEFAULT_OUT)
    results = run_benchmark(quick=args.quick, with_fiftyone=not args.no_fiftyone)
    table = to_markdown(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table, end="")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The embedded demo: real digit images with known label noise and simulated annotators, so detection quality
can be measured against the truth on any machine, offline.

scikit-learn's ``load_digits`` holds 1,797 real 8x8 scans of handwritten digits. The demo writes them as PNG
files, gives a share of them a wrong class (symmetric: any other digit; pairs: the confusable partner), and,
optionally, has three annotators of different reliability label them; the shipped label is then the annotators'
majority vote, as many labelling pipelines do. Two broken files (a truncated PNG and a missing one) show how
sample-level problems are reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

CONFUSABLE_PAIRS = [("1", "7"), ("3", "8"), ("4", "9"), ("5", "6"), ("0", "2")]
ANNOTATOR_ERROR_RATES = {"alice": 0.05, "bob": 0.15, "carol": 0.30}
ANNOTATOR_COVERAGE = 0.8
IMAGE_SIDE = 32


@dataclass
class DemoDataset:
    """Files of a built demo dataset and its ground truth (indexed by sample id)."""

    root: Path
    manifest: Path
    annotations: Path | None
    truth: pd.DataFrame


def _wrong_classes(true: np.ndarray, noisy: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    classes = np.array([str(d) for d in range(10)])
    out = true.copy()
    partner = {a: b for a, b in CONFUSABLE_PAIRS} | {b: a for a, b in CONFUSABLE_PAIRS}
    for i in np.flatnonzero(noisy):
        if kind == "pairs":
            out[i] = partner[true[i]]
        else:
            out[i] = rng.choice(classes[classes != true[i]])
    return out


def build_demo_dataset(root: Path, noise: float = 0.1, noise_kind: str = "symmetric", annotators: int = 3,
                       seed: int = 0, broken_files: bool = True, limit: int | None = None) -> DemoDataset:
    """Write the demo images, manifest, annotations (if any) and truth under ``root``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    if noise_kind not in ("symmetric", "pairs"):
        raise ValueError(f"noise kind must be 'symmetric' or 'pairs', not {noise_kind!r}")
    if not 0 <= noise < 1:
        raise ValueError(f"noise must be in [0, 1), got {noise}")
    if annotators not in (0, 1, 2, 3):
        raise ValueError("the demo simulates 0 to 3 annotators")
    rng = np.random.default_rng(seed)
    digits = load_digits()
    images, targets = digits.images, digits.target
    if limit is not None:
        keep = np.sort(rng.choice(len(targets), size=min(limit, len(targets)), replace=False))
        images, targets = images[keep], targets[keep]
    n = len(targets)
    true = np.array([str(t) for t in targets])
    noisy = rng.random(n) < noise
    assigned = _wrong_classes(true, noisy, noise_kind, rng)
    root = Path(root)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    ids = [f"digit-{i:04d}" for i in range(n)]
    files = []
    for sample_id, pixels in zip(ids, images, strict=True):
        grey = Image.fromarray((pixels * (255.0 / 16.0)).round().astype(np.uint8), mode="L")
        path = image_dir / f"{sample_id}.png"
        grey.resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.NEAREST).save(path)
        files.append(f"images/{sample_id}.png")
    splits = np.where(rng.random(n) < 0.8, "train", "test")
    annotation_rows = []
    if annotators:
        names = list(ANNOTATOR_ERROR_RATES)[:annotators]
        classes = np.array([str(d) for d in range(10)])
        shipped = []
        for i in range(n):
            labelled = [a for a in names if rng.random() < ANNOTATOR_COVERAGE] or [names[rng.integers(len(names))]]
            votes = []
            for annotator in labelled:
                label = assigned[i]
                if rng.random() < ANNOTATOR_ERROR_RATES[annotator]:
                    label = rng.choice(classes[classes != assigned[i]])
                votes.append(label)
                annotation_rows.append((ids[i], annotator, label))
            counts = pd.Series(votes).value_counts()
            tied = sorted(counts[counts == counts.max()].index)
            shipped.append(tied[rng.integers(len(tied))])
        given = np.array(shipped)
    else:
        given = assigned
    manifest = pd.DataFrame({"sample_id": ids, "filepath": files, "label": given, "split": splits})
    truth = pd.DataFrame({"true_label": true, "given_label": given, "is_noisy": given != true,
                          "assigned_wrong_class": noisy}, index=pd.Index(ids, name="sample_id"))
    if broken_files:
        # Real-world trouble: a PNG cut short by a failed copy, and a file that was deleted.
        source = (image_dir / f"{ids[0]}.png").read_bytes()
        (image_dir / "broken-truncated.png").write_bytes(source[: len(source) // 2])
        extra = pd.DataFrame({"sample_id": ["broken-truncated", "broken-missing"],
                              "filepath": ["images/broken-truncated.png", "images/deleted.png"],
                              "label": ["3", "5"], "split": ["train", "train"]})
        manifest = pd.concat([manifest, extra], ignore_index=True)
    manifest_path = root / "manifest.csv"
    manifest.to_csv(manifest_path, index=False)
    annotations_path = None
    if annotation_rows:
        annotations_path = root / "annotations.csv"
        pd.DataFrame(annotation_rows, columns=["sample", "annotator", "label"]).to_csv(annotations_path, index=False)
    truth.to_csv(root / "truth.csv")
    return DemoDataset(root=root, manifest=manifest_path, annotations=annotations_path, truth=truth)


@dataclass
class DemoOutcome:
    """How the audit's flags compare with the injected truth."""

    run_path: Path
    embedder: str
    embedder_note: str | None
    n_samples: int
    n_wrong: int
    n_flagged: int
    n_flagged_wrong: int
    audited: str
    unreadable: int

    @property
    def precision(self) -> float:
        return self.n_flagged_wrong / self.n_flagged if self.n_flagged else 0.0

    @property
    def recall(self) -> float:
        return self.n_flagged_wrong / self.n_wrong if self.n_wrong else 1.0

    def lines(self) -> list[str]:
        out = [f"demo run: {self.run_path}", f"embedder: {self.embedder}"]
        if self.embedder_note:
            out.append(f"NOTE: {self.embedder_note}")
        out += [
            f"samples: {self.n_samples} ({self.unreadable} unreadable, reported as sample-level problems)",
            f"audited label: {self.audited}; wrong against the injected truth: {self.n_wrong}",
            f"flagged as likely mislabelled: {self.n_flagged}, of which truly wrong: {self.n_flagged_wrong}",
            f"precision {self.precision:.2f}, recall {self.recall:.2f}",
        ]
        report = self.run_path / "index.html"
        if report.is_file():
            out.append(f"report: {report}")
        return out


def compare_with_truth(run_path: Path, truth: pd.DataFrame, embedder: str, note: str | None) -> DemoOutcome:
    """Score the run's flags against the truth on the samples the audit could read."""
    from audit.results import RunResults

    run = RunResults.load(run_path)
    samples = run.samples.join(truth, how="inner")
    samples = samples[samples["readable"]]
    audited_col = "mistakes_audited_label" if "mistakes_audited_label" in samples else "label"
    wrong = samples[audited_col].astype(str) != samples["true_label"].astype(str)
    flagged = samples.get("mistakes_is_issue", pd.Series(False, index=samples.index)).fillna(False).astype(bool)
    mistakes = run.check_metrics("mistakes") or {}
    return DemoOutcome(run_path=run.path, embedder=embedder, embedder_note=note, n_samples=len(run.samples),
                       n_wrong=int(wrong.sum()), n_flagged=int(flagged.sum()),
                       n_flagged_wrong=int((flagged & wrong).sum()), audited=str(mistakes.get("audited", "label")),
                       unreadable=int((~run.samples["readable"]).sum()))


def run_demo(output_dir: Path = Path("reports"), noise: float = 0.1, noise_kind: str = "symmetric",
             annotators: int = 3, embedder: str = "auto", run_name: str = "demo", seed: int = 0,
             report: bool = True, limit: int | None = None, cache_dir: Path | None = None,
             progress: bool = True) -> DemoOutcome:
    """Build the demo dataset, audit it end to end, and compare the flags with the truth."""
    from audit.config import build_config
    from audit.runner import run

    output_dir = Path(output_dir)
    data = build_demo_dataset(output_dir / f"{run_name}-data", noise=noise, noise_kind=noise_kind,
                              annotators=annotators, seed=seed, limit=limit)
    source = {"kind": "manifest", "path": data.manifest, "annotations": data.annotations}
    config = build_config(overrides={
        "source": source, "embedder": {"kind": embedder, "cache_dir": cache_dir}, "output_dir": output_dir,
        "run_name": run_name, "seed": seed, "report": report,
        "projection": {"seed": seed},
    })
    results = run(config, progress=progress)
    return compare_with_truth(results.path, data.truth, results.summary["embedder"]["name"],
                              results.summary["embedder"].get("note"))

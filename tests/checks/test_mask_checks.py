"""The registered mask checks (mask_stats, mask_agreement, mask_mistakes) on masks small enough to work out by hand:
their per-image columns, metrics, the mask files they write, the region verdicts after the object stage, and the
gate's pixel-share shift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.checks.base import CheckContext, validate_result
from audit.checks.mask_agreement import NEEDS_ANNOTATORS, MaskAgreementCheck
from audit.checks.mask_mistakes import (
    CLASSIFIER,
    CONSENSUS,
    NO_EVIDENCE,
    MaskMistakesCheck,
    finding_kind,
    region_findings,
    region_objects,
)
from audit.checks.mask_stats import NO_MASKS, MaskStatsCheck, mask_targets, pixel_share_shift, write_mask
from audit.declarations import Unavailable
from audit.sources.masks import IGNORE, MaskSpec, read_mask
from tests.checks.test_mask_stats import N_FEW, N_MANY, SIDE, _memory, many_masks  # noqa: F401 (a fixture)
from tests.checks.test_mask_stats import SPEC as MANY_SPEC

TWO = MaskSpec(classes=("background", "fg"), values=(0, 1), ignore_values=(255,), background=0, source="test")
THREE = MaskSpec(classes=("background", "a", "b"), values=(0, 1, 2), ignore_values=(255,), background=0,
                 source="test")


def save(path: Path, mask: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8), mode="L").save(path)
    return str(path)


def context(samples: pd.DataFrame, spec: MaskSpec | None, **extra) -> CheckContext:
    more = {"mask_spec": spec, **extra} if spec is not None else extra
    return CheckContext(samples=samples, class_names=sorted(spec.classes) if spec else [], extra=more)


class Baseline:
    """What a check reads of a baseline run: its name and a check's metrics."""

    def __init__(self, name: str, metrics: dict) -> None:
        self.name, self._metrics = name, metrics

    def check_metrics(self, check: str) -> dict | None:
        return self._metrics.get(check)


# ------------------------------------------------------------------------------------------------ mask_stats


def two_masks(tmp_path: Path) -> pd.DataFrame:
    # image a: 4 fg pixels of 16; image b: 2 fg, 12 background, 2 unlabelled.
    a = np.zeros((4, 4), np.uint8)
    a[:2, :2] = 1
    b = np.zeros((4, 4), np.uint8)
    b[3, :2] = 1
    b[0, 2:] = 255
    return pd.DataFrame({"filepath": ["a.png", "b.png"], "label": None, "split": ["train", "val"],
                         "mask": [save(tmp_path / "a.png", a), save(tmp_path / "b.png", b)]},
                        index=pd.Index(["a", "b"], name="sample_id"))


def test_mask_stats_by_hand(tmp_path: Path) -> None:
    samples = two_masks(tmp_path)
    result = MaskStatsCheck().run(context(samples, TWO))
    validate_result(result, samples.index)
    m = result.metrics
    # 30 labelled pixels, 6 of them fg; 2 of the 32 pixels unlabelled.
    assert m["classes"]["fg"]["share"] == pytest.approx(6 / 30)
    assert m["classes"]["background"]["share"] == pytest.approx(24 / 30)
    assert m["ignore_share"] == pytest.approx(2 / 32)
    assert m["per_split"]["val"]["classes"]["fg"]["share"] == pytest.approx(2 / 14)
    assert m["mask_spec"]["classes"] == ["background", "fg"] and m["baseline"] is None
    assert result.samples.loc["a", "mask_stats_share:fg"] == pytest.approx(4 / 16)
    assert result.samples.loc["b", "mask_stats_ignore_share"] == pytest.approx(2 / 16)
    assert all(c.startswith("mask_stats_") for c in result.samples.columns)


def test_mask_stats_records_the_shift_against_the_baseline(tmp_path: Path) -> None:
    samples = two_masks(tmp_path)
    before = Baseline("last-week", {"mask_stats": {"classes": {"fg": {"share": 0.1}, "background": {"share": 0.9}}}})
    m = MaskStatsCheck().run(CheckContext(samples=samples, class_names=[], baseline=before,
                                          extra={"mask_spec": TWO})).metrics
    assert m["baseline"]["run_name"] == "last-week"
    assert m["baseline"]["deltas"]["fg"]["share_delta"] == pytest.approx(6 / 30 - 0.1)
    # The gate's rule reads the recorded shift without a baseline, and compares the summaries with one.
    summary = {"checks": {"mask_stats": m}}
    assert pixel_share_shift(summary, None) == {"fg": pytest.approx(0.1), "background": pytest.approx(0.1)}
    other = {"run_name": "older", "checks": {"mask_stats": {"classes": {"fg": {"share": 0.25},
                                                                        "background": {"share": 0.75}}}}}
    assert pixel_share_shift(summary, other) == {"fg": pytest.approx(0.05), "background": pytest.approx(0.05)}


def test_pixel_share_shift_needs_a_baseline() -> None:
    missing = pixel_share_shift({"checks": {"mask_stats": {"baseline": None}}}, None)
    assert isinstance(missing, Unavailable) and missing.needs_baseline
    absent = pixel_share_shift({"checks": {"mask_stats": {}}}, {"run_name": "x", "checks": {}})
    assert isinstance(absent, Unavailable) and not absent.needs_baseline and "'x'" in absent.reason


def test_mask_checks_skip_runs_without_masks(tmp_path: Path) -> None:
    samples = pd.DataFrame({"filepath": ["a.png"], "label": ["cat"], "split": ["all"]}, index=["a"])
    for check in (MaskStatsCheck(), MaskAgreementCheck(), MaskMistakesCheck()):
        result = check.run(context(samples, None))
        assert result.metrics == {"skipped": NO_MASKS} and result.samples.empty
        validate_result(result, samples.index)


# ------------------------------------------------------------------------------------------------ mask files


def test_masks_are_written_in_the_shipped_encoding(tmp_path: Path) -> None:
    codes = np.array([[0, 1, 2], [IGNORE, 2, 0]], np.int16)
    sparse = MaskSpec(classes=("background", "road", "car"), values=(0, 7, 200), ignore_values=(255,), background=0)
    write_mask(codes, sparse, tmp_path / "index.png")
    assert np.asarray(Image.open(tmp_path / "index.png")).tolist() == [[0, 7, 200], [255, 200, 0]]
    assert np.array_equal(read_mask(tmp_path / "index.png", sparse), codes)
    colours = MaskSpec(classes=("background", "road", "car"), colours=((0, 0, 0), (128, 64, 128), (0, 0, 142)),
                       ignore_colours=((255, 255, 255),), background=0)
    write_mask(codes, colours, tmp_path / "colour.png")
    assert tuple(np.asarray(Image.open(tmp_path / "colour.png"))[1, 0]) == (255, 255, 255)
    assert np.array_equal(read_mask(tmp_path / "colour.png", colours), codes)
    assert mask_targets(sparse) == {0: "background", 7: "road", 200: "car"}
    assert mask_targets(colours) == {"#000000": "background", "#804080": "road", "#00008e": "car"}


# ------------------------------------------------------------------------------------------------ mask_agreement

# Two annotators agree on 14 of 16 pixels (fg IoU 3/5, background 11/13); the shipped mask adds a 2x2 block.
A2 = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.uint8)
B2 = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.uint8)
GIVEN2 = A2.copy()
GIVEN2[2:, 2:] = 1


def test_mask_agreement_check_by_hand(tmp_path: Path) -> None:
    annotations = pd.DataFrame([("x", "ann", save(tmp_path / "ann.png", A2)), ("x", "bob", save(tmp_path / "bob.png",
                                                                                                 B2))],
                               columns=["sample_id", "annotator", "mask_path"])
    samples = pd.DataFrame({"filepath": ["x.png"], "label": None, "split": ["all"],
                            "mask": [save(tmp_path / "given.png", GIVEN2)]}, index=["x"])
    run_dir = tmp_path / "run"
    check = MaskAgreementCheck()
    check_context = CheckContext(samples=samples, class_names=[], params={"min_region_pixels": 1},
                                 extra={"mask_spec": TWO, "mask_annotations": annotations, "run_dir": run_dir})
    result = check.run(check_context)
    validate_result(result, samples.index)
    m = result.metrics
    assert m["per_class"]["fg"]["mean_pairwise_iou"] == pytest.approx(3 / 5)
    assert m["per_class"]["background"]["mean_pairwise_dice"] == pytest.approx(22 / 24)
    assert m["mean_pairwise_iou"] == pytest.approx((3 / 5 + 11 / 13) / 2)
    row = result.samples.loc["x"]
    # The consensus (ties left unlabelled) is where the two agree; the shipped 2x2 block departs from it.
    assert row["mask_agreement_n_given_regions"] == 1
    assert row["mask_agreement_consensus_mask"] == "mask_consensus/x.png"
    written = np.asarray(Image.open(run_dir / row["mask_agreement_consensus_mask"]))
    expected = np.where(A2 == B2, A2, 255)
    assert written.tolist() == expected.tolist()
    assert m["disputed_regions_largest"][0]["sample_id"] == "x" and m["disputed_regions_largest"][0]["area"] == 2
    assert MaskAgreementCheck.summary_line(m).startswith("2 annotators on 1 images")


def test_mask_agreement_needs_two_annotators(tmp_path: Path) -> None:
    samples = pd.DataFrame({"filepath": ["x.png"], "mask": [save(tmp_path / "g.png", A2)]}, index=["x"])
    one = pd.DataFrame([("x", "ann", save(tmp_path / "a.png", A2))], columns=["sample_id", "annotator", "mask_path"])
    for table in (None, one):
        result = MaskAgreementCheck().run(context(samples, TWO, mask_annotations=table))
        assert result.metrics == {"skipped": NEEDS_ANNOTATORS}


# ------------------------------------------------------------------------------------------------ mask_mistakes


def region_case(tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Image ``p``: region R1 (class a, top left) the annotators confirm; region R2 (shipped b, bottom right) they
    paint a; a 2x2 block they paint a where the shipped mask has background. Image ``q``: all agree."""
    shipped = np.zeros((8, 8), np.uint8)
    shipped[:3, :3] = 1
    shipped[5:, 5:] = 2
    people = shipped.copy()
    people[5:, 5:] = 1
    people[:2, 6:] = 1
    clean = np.zeros((8, 8), np.uint8)
    clean[2:5, 2:5] = 2
    masks = pd.Series({"p": save(tmp_path / "given" / "p.png", shipped), "q": save(tmp_path / "given" / "q.png",
                                                                                   clean)})
    samples = pd.DataFrame({"filepath": ["p.png", "q.png"], "label": None, "split": "all", "mask": masks},
                           index=["p", "q"])
    rows = [(s, name, save(tmp_path / name / f"{s}.png", people if s == "p" else clean))
            for name in ("ann", "bob", "cat") for s in ("p", "q")]
    annotations = pd.DataFrame(rows, columns=["sample_id", "annotator", "mask_path"])
    objects = region_objects(masks, THREE)
    return samples, annotations, objects


def judged(objects: pd.DataFrame, verdicts: dict[str, tuple[str | None, float, str]]) -> pd.DataFrame:
    """The object stage's columns on the regions: ``{label: (kind, label quality, suggested)}``."""
    out = objects.copy()
    out["object_mistakes_kind"] = [verdicts[(s, lab)][0] for s, lab in zip(out["sample_id"], out["label"],
                                                                           strict=True)]
    out["object_mistakes_is_issue"] = out["object_mistakes_kind"].notna()
    out["object_mistakes_label_quality"] = [verdicts[(s, lab)][1] for s, lab in zip(out["sample_id"], out["label"],
                                                                                    strict=True)]
    out["object_mistakes_suggested_label"] = [verdicts[(s, lab)][2] for s, lab in zip(out["sample_id"],
                                                                                       out["label"], strict=True)]
    return out


def test_regions_are_judged_by_the_classifier_and_the_annotators(tmp_path: Path) -> None:
    samples, annotations, objects = region_case(tmp_path)
    # The classifier flags both regions of p (R1 wrongly) and trusts q's.
    objects = judged(objects, {("p", "a"): ("wrong_class", 0.1, "b"), ("p", "b"): ("wrong_class", 0.2, "a"),
                               ("q", "b"): (None, 0.95, "b")})
    run_dir = tmp_path / "run"
    assert MaskMistakesCheck().run(context(samples, THREE)).metrics["mode"] == "regions"
    result, regions = region_findings(context(samples, THREE, objects=objects, mask_annotations=annotations,
                                              run_dir=run_dir))
    validate_result(result, samples.index)
    p, q = result.samples.loc["p"], result.samples.loc["q"]
    # R1: confirmed by the consensus, no finding; R2: a wrong-class finding both witnesses agree on (the consensus
    # disagreement there is the same place); the 2x2 block: a "missing" finding of the consensus alone.
    assert (p["mask_mistakes_n_findings"], p["mask_mistakes_n_region_findings"],
            p["mask_mistakes_n_consensus_findings"]) == (2, 1, 1)
    # score: 2 findings + max(1 - 0.1, 13 of 64 pixels differing from the consensus)
    assert p["mask_mistakes_score"] == pytest.approx(2.9)
    assert p["mask_mistakes_consensus_disagreement"] == pytest.approx(13 / 64)
    assert not q["mask_mistakes_is_issue"] and q["mask_mistakes_score"] == pytest.approx(0.05)
    m = result.metrics
    assert (m["n_issue_images"], m["issue_image_rate"], m["n_vetoed_by_annotators"]) == (1, 0.5, 1)
    assert m["per_kind"] == {"wrong_class": 1, "extra": 0, "missing": 1, "badly_drawn": 0}
    findings = pd.read_parquet(run_dir / "mask_findings.parquet").set_index("kind")
    assert findings.loc["wrong_class", "evidence"] == f"{CLASSIFIER} + {CONSENSUS}"
    assert (findings.loc["wrong_class", "given_label"], findings.loc["wrong_class", "suggested_label"]) == ("b", "a")
    assert (findings.loc["missing", "x"], findings.loc["missing", "y"], findings.loc["missing", "area"]) == (6, 0, 4)
    issue = np.asarray(Image.open(run_dir / p["mask_mistakes_issue_mask"])) > 0
    expected = np.zeros((8, 8), bool)
    expected[5:, 5:] = True
    expected[:2, 6:] = True
    assert np.array_equal(issue, expected) and pd.isna(q["mask_mistakes_issue_mask"])
    verdicts = regions.join(objects[["sample_id", "label"]]).set_index(["sample_id", "label"])
    assert pd.isna(verdicts.loc[("p", "a"), "mask_mistakes_region_finding"])
    assert verdicts.loc[("p", "a"), "mask_mistakes_region_consensus_share"] == 1.0
    assert verdicts.loc[("p", "b"), "mask_mistakes_region_finding"] == "wrong_class"


def test_without_annotators_the_classifier_alone_decides(tmp_path: Path) -> None:
    samples, _, objects = region_case(tmp_path)
    objects = judged(objects, {("p", "a"): ("spurious", 0.3, "background"), ("p", "b"): (None, 0.9, "b"),
                               ("q", "b"): ("badly_located", 0.6, "b")})
    result, _ = region_findings(context(samples, THREE, objects=objects))
    assert result.metrics["per_kind"] == {"wrong_class": 0, "extra": 1, "missing": 0, "badly_drawn": 1}
    assert result.samples["mask_mistakes_score"].tolist() == [pytest.approx(1.7), pytest.approx(1.4)]
    nothing, regions = region_findings(context(samples, THREE, objects=region_objects(samples["mask"], THREE)))
    assert nothing.metrics == {"skipped": NO_EVIDENCE} and regions is None


def test_with_pixel_probabilities(tmp_path: Path) -> None:
    from audit.checks.mask_mistakes import segmentation_label_quality

    rng = np.random.default_rng(0)
    shipped = np.zeros((3, 6, 6), np.uint8)
    shipped[:, 1:4, 1:4] = 1
    shipped[1, 1:4, 1:4] = 2  # image 1's block is painted b where the model sees a
    probs = np.full((3, 3, 6, 6), 0.05, np.float32)
    probs[:, 0] = 0.9
    probs[:, :, 1:4, 1:4] = 0.05
    probs[:, 1, 1:4, 1:4] = 0.9
    probs += rng.uniform(0, 0.01, probs.shape).astype(np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    masks = pd.Series({f"s{i}": save(tmp_path / f"s{i}.png", shipped[i]) for i in range(3)})
    samples = pd.DataFrame({"filepath": "x.png", "label": None, "split": "all", "mask": masks})
    run_dir = tmp_path / "run"
    result = MaskMistakesCheck().run(CheckContext(samples=samples, class_names=[], params={"min_issue_pixels": 1},
                                                  extra={"mask_spec": THREE, "mask_probs": probs, "run_dir": run_dir}))
    validate_result(result, samples.index)
    direct = segmentation_label_quality(samples, THREE, probs, min_issue_pixels=1)
    row = result.samples.loc["s1"]
    assert row["mask_mistakes_issue_pixels"] == direct.per_image.loc["s1", "mask_mistakes_issue_pixels"] > 0
    assert row["mask_mistakes_score"] == pytest.approx(row["mask_mistakes_n_issue_regions"]
                                                       + row["mask_mistakes_issue_share"])
    # the doubt map is 255 x (1 - the probability of the shipped class), rounded
    doubt = np.asarray(Image.open(run_dir / row["mask_mistakes_doubt_map"]))
    own = np.take_along_axis(probs[1], shipped[1][None].astype(np.int64), axis=0)[0]
    assert np.array_equal(doubt, np.round((1 - own) * 255).astype(np.uint8))
    findings = pd.read_parquet(run_dir / "mask_findings.parquet")
    assert len(findings) == len(direct.issue_regions) == result.metrics["n_findings"]
    assert set(findings[findings["sample_id"] == "s1"]["kind"]) == {"wrong_class"}
    assert result.metrics["mode"] == "predictions" and result.metrics["issue_image_rate"] == pytest.approx(1 / 3)


def test_finding_kinds() -> None:
    assert finding_kind("car", "background", "background") == "extra"
    assert finding_kind("background", "car", "background") == "missing"
    assert finding_kind("car", "road", "background") == "wrong_class"
    assert finding_kind("car", "road", None) == "wrong_class"


# ------------------------------------------------------------------------------------------------ memory


@pytest.mark.slow
def test_what_the_checks_add_streams_too(many_masks, tmp_path: Path) -> None:  # noqa: F811 (the fixture)
    """The consensus files, the doubt maps and the region verdicts decode one image at a time: their working memory
    does not grow with the number of masks (the same measure as the streamed computations' test)."""
    from audit.checks.mask_agreement import write_consensus_masks
    from audit.checks.mask_mistakes import write_doubt_maps

    ids, sets = many_masks["ids"], many_masks["sets"]

    def run(n: int) -> dict[str, tuple[int, int]]:
        samples = pd.DataFrame({"filepath": "x.png", "label": None, "split": "all", "mask": sets["given"][:n]},
                               index=ids[:n])
        long = pd.DataFrame([(ids[i], a, sets[a][i]) for a in ("alice", "bob", "carol") for i in range(n)],
                            columns=["sample_id", "annotator", "mask_path"])
        folder = tmp_path / f"run-{n}"
        (folder / "c").mkdir(parents=True, exist_ok=True)
        (folder / "d").mkdir(parents=True, exist_ok=True)
        return {
            "consensus": _memory(lambda: write_consensus_masks(long, MANY_SPEC, ids[:n], folder / "c")),
            "doubt": _memory(lambda: write_doubt_maps(samples["mask"], MANY_SPEC, many_masks["probs"], folder / "d")),
            "regions": _memory(lambda: region_findings(CheckContext(
                samples=samples, class_names=[], extra={"mask_spec": MANY_SPEC, "mask_annotations": long,
                                                        "run_dir": folder}))),
        }

    run(3)
    few, many = run(N_FEW), run(N_MANY)
    one_mask = SIDE * SIDE * 2
    for name in few:
        (work_few, kept_few), (work_many, kept_many) = few[name], many[name]
        assert (work_many - work_few) / (N_MANY - N_FEW) < one_mask / 2, (name, few[name], many[name])
        assert (kept_many - kept_few) / (N_MANY - N_FEW) < one_mask / 2, (name, few[name], many[name])

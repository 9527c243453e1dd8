"""``label-audit review`` through the CLI on a real run (digit scans, pixel embeddings, two annotators, some images
unlabelled): CVAT export -> import unchanged and with a reviewer's edits, a Label Studio export file read back,
label next for unlabelled images, box suspects of a detection run, feedback pages, and one-line errors (exit 2)
for bad input.

Expected verdicts and corrections come from the digits' true classes (what the simulated reviewer answers)."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from audit import review
from audit.cli import app
from audit.integrations import cvat
from audit.results import RunResults, write_run
from tests.conftest import write_digit

N_LABELLED, N_UNLABELLED = 100, 12
WRONG = {64: "9", 72: "7", 81: "0", 88: "5", 95: "1"}  # index -> the wrong label the manifest gives


def invoke(*args: str | Path, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output + (repr(result.exception) if result.exception else "")
    return result


def _build(root: Path, digit_images, name: str = "week1") -> dict:
    images, targets = digit_images
    data = root / "data"
    rows, annotations = [], []
    for i in range(N_LABELLED + N_UNLABELLED):
        write_digit(data / "images" / f"d{i:04d}.png", images[i])
        sid = f"images/d{i:04d}.png"
        rows.append({"filepath": sid, "label": WRONG.get(i, str(targets[i])) if i < N_LABELLED else ""})
        if i < 60:  # two annotators on the first 60 images; "bea" errs on every fifth
            annotations.append({"sample_id": sid, "annotator": "ana", "label": str(targets[i])})
            annotations.append({"sample_id": sid, "annotator": "bea <qa>",
                                "label": str((targets[i] + 1) % 10) if i % 5 == 0 else str(targets[i])})
    manifest = data / "labels.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    pd.DataFrame(annotations).to_csv(data / "annotations.csv", index=False)
    config = root / "label-audit.yaml"
    config.write_text(f"projection: {{enabled: false}}\nembedder: {{cache_dir: '{root / 'cache'}'}}\n"
                      f"output_dir: '{root / 'reports'}'\n"
                      "checks: {mistakes: {filter_by: [low_margin_calibrated_count, predicted_neq_given]}}\n")
    invoke("run", "--manifest", manifest, "--annotations", data / "annotations.csv", "--embedder", "pixels",
           "--config", config, "--run-name", name, "--quiet")
    truth = {f"images/d{i:04d}.png": str(targets[i]) for i in range(N_LABELLED + N_UNLABELLED)}
    return {"root": root, "manifest": manifest, "truth": truth, "path": root / "reports" / name}


@pytest.fixture(scope="module")
def built(tmp_path_factory, digit_images):
    return _build(tmp_path_factory.mktemp("cli-review"), digit_images)


def fresh_copy(built: dict, tmp_path: Path) -> dict:
    """The module's run folder copied for one test, so what a test writes (ledger, corrections) is its own."""
    path = tmp_path / "reports" / built["path"].name
    shutil.copytree(built["path"], path)
    return {**built, "path": path}


def test_cvat_export_reimports_unchanged_then_reads_the_reviewers_edits(built, tmp_path):
    built = fresh_copy(built, tmp_path)
    run = RunResults.load(built["path"])
    out = invoke("review", "export", run.path, "--to", "cvat", "--k", "8", "--out", tmp_path).output
    xml = tmp_path / "cvat-review.xml"
    assert f"CVAT annotations (CVAT for images 1.1): {xml}" in out
    root = ET.parse(xml).getroot()
    cvat.validate_cvat_xml(root, str(xml))  # the structure CVAT documents
    ledger = review.read_ledger(run.path)
    suspects = run.samples[run.samples["mistakes_is_issue"]].sort_values("mistakes_label_quality")
    assert len(suspects) >= 8, "the design has more than 8 suspects"
    assert list(ledger.index) == list(suspects.index[:8]) and len(root.findall("image")) == 8
    with zipfile.ZipFile(tmp_path / "cvat-images.zip") as archive:
        assert sorted(archive.namelist()) == sorted(i.get("name") for i in root.findall("image"))

    # re-importing the untouched file: no answers, the ledger as it was
    out = invoke("review", "import", run.path, "--from", "cvat", xml, "--out", tmp_path / "fixed").output
    assert "imported 0 answers" in out and "0 ledger items changed" in out
    pd.testing.assert_frame_equal(review.read_ledger(run.path), ledger)

    # the reviewer in CVAT: relabels wrong labels to the truth, marks right ones correct, one "unsure"
    expected = {}
    tags = list(root.iter("tag"))
    for n, tag in enumerate(tags):
        attributes = {a.get("name"): a for a in tag.findall("attribute")}
        sid = attributes["item_id"].text
        if n == len(tags) - 1:
            attributes["review"].text, expected[sid] = "unsure", ("unsure", None)
        elif tag.get("label") != built["truth"][sid]:
            tag.set("label", built["truth"][sid])
            expected[sid] = ("wrong", built["truth"][sid])
        else:
            attributes["review"].text, expected[sid] = "correct", ("correct", None)
    ET.ElementTree(root).write(xml, encoding="utf-8", xml_declaration=True)
    out = invoke("review", "import", run.path, "--from", "cvat", xml, "--reviewer", "cho",
                 "--out", tmp_path / "fixed").output
    ledger = review.read_ledger(run.path)
    assert {s: (r["verdict"], r["corrected_label"]) for s, r in ledger.iterrows()} == expected
    assert set(ledger["reviewer"]) == {"cho"}
    fixes = {s: c for s, (v, c) in expected.items() if v == "wrong"}
    assert fixes, "the design puts wrong labels among the worst suspects"
    corrected = pd.read_csv(tmp_path / "fixed" / "labels.corrected.csv", dtype=str, keep_default_na=False)
    source = pd.read_csv(built["manifest"], dtype=str, keep_default_na=False)
    changed = corrected[corrected["label"] != source["label"]]
    assert dict(zip(changed["filepath"], changed["label"], strict=True)) == fixes
    assert f"{len(fixes)} applied, 0 skipped" in out
    # `review corrections` writes the same files again, wherever asked
    again = invoke("review", "corrections", run.path, "--out", tmp_path / "again").output
    assert f"{len(fixes)} applied, 0 skipped" in again
    assert (tmp_path / "again" / "labels.corrected.csv").read_bytes() == (
        tmp_path / "fixed" / "labels.corrected.csv").read_bytes()
    # the run's own figures were refreshed from the ledger: the wrong ones among the decided suspects
    metrics = RunResults.load(run.path).summary["checks"]["review"]
    decided = [v for v, _ in expected.values() if v in ("correct", "wrong")]
    assert metrics["precision_at_k"]["precision"] == pytest.approx(decided.count("wrong") / len(decided))
    assert RunResults.load(run.path).samples.loc[list(expected), "review_verdict"].tolist() == [
        v for v, _ in expected.values()]


def test_label_next_for_unlabelled_images_and_answers_from_a_label_studio_file(built, tmp_path):
    built = fresh_copy(built, tmp_path)
    run_dir = built["path"]
    out = invoke("review", "next", run_dir, "--to", "labelstudio", "--k", "5", "--unlabelled-only").output
    assert "exported the 5 images to label next" in out and "only the tasks file was written" in out
    tasks = json.loads((run_dir / "review" / "labelstudio-next-tasks.json").read_text())
    unlabelled = {f"images/d{i:04d}.png" for i in range(N_LABELLED, N_LABELLED + N_UNLABELLED)}
    items = [t["data"]["item_id"] for t in tasks]
    assert len(items) == 5 and set(items) <= unlabelled
    assert all(t["data"]["selection"] == "label_next" and "has no label yet" in t["data"]["prompt"] for t in tasks)
    # CVAT cannot carry an unlabelled image (a tag needs a label): a one-line refusal, exit 2
    refused = invoke("review", "next", run_dir, "--to", "cvat", "--k", "3", "--unlabelled-only", code=2)
    assert "CVAT tags need a given label" in refused.output

    # what Label Studio's JSON export of that project looks like once a labeller answered two tasks
    export = []
    for n, task in enumerate(tasks):
        answers = [] if n >= 2 else [{"id": n + 1, "completed_by": {"id": 1, "email": "lee@example.com"},
                                      "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                                  "value": {"choices": [built["truth"][task["data"]["item_id"]]]}}],
                                      "was_cancelled": False, "created_at": "2026-03-02T10:00:00Z",
                                      "updated_at": "2026-03-02T10:00:00Z"}]
        export.append({"id": 100 + n, "data": task["data"], "annotations": answers})
    file = tmp_path / "export.json"
    file.write_text(json.dumps(export))
    out = invoke("review", "import", run_dir, "--from", "labelstudio-file", file).output
    assert "imported 2 answers" in out
    labelled = {t["data"]["item_id"]: built["truth"][t["data"]["item_id"]] for t in tasks[:2]}
    corrected = pd.read_csv(run_dir / "corrections" / "labels.corrected.csv", dtype=str, keep_default_na=False)
    source = pd.read_csv(built["manifest"], dtype=str, keep_default_na=False)
    changed = corrected[corrected["label"] != source["label"]]
    assert dict(zip(changed["filepath"], changed["label"], strict=True)) == labelled
    ledger = review.read_ledger(run_dir)
    assert set(ledger.loc[list(labelled), "reviewer"]) == {"lee@example.com"}
    # label-next answers are no flags: precision at k leaves them out; the run shows the new labels
    refreshed = RunResults.load(run_dir)
    assert refreshed.summary["checks"]["review"]["precision_at_k"]["n_items"] == 0
    assert refreshed.samples.loc[list(labelled), "review_corrected_label"].to_dict() == labelled


def test_feedback_pages_for_each_annotator(built, tmp_path):
    built = fresh_copy(built, tmp_path)
    out = invoke("review", "feedback", built["path"]).output
    folder = built["path"] / "feedback"
    names = {"ana": "ana", "bea <qa>": review_slug("bea <qa>")}
    for name, slug in names.items():
        assert (folder / f"{slug}.md").is_file() and (folder / f"{slug}.html").is_file()
        assert f"{name}: " in out
    page = (folder / f"{names['bea <qa>']}.html").read_text()
    assert "bea &lt;qa&gt;" in page and "<qa>" not in page  # the name is escaped
    markdown = (folder / f"{names['bea <qa>']}.md").read_text()
    assert markdown.startswith("# Label feedback for bea \\<qa\\>")
    assert "index.html" in out and (folder / "index.md").is_file()


def test_box_suspects_of_a_detection_run_go_out_and_come_back(tmp_path):
    """Boxes flagged by the object_mistakes check on a real photo: a wrong class (a face labelled "flag") and a
    spurious box (the classifier takes it for background) are exported, reviewed in CVAT, read back, and the
    corrected boxes are written as a new file."""
    from PIL import Image
    from skimage import data

    image = tmp_path / "photos" / "astronaut.png"
    image.parent.mkdir()
    Image.fromarray(data.astronaut()).save(image)  # 512 x 512
    samples = pd.DataFrame({"filepath": [str(image)], "label": [None], "split": ["all"], "readable": [True],
                            "problems": [""], "content_hash": ["astronaut-v1"]},
                           index=pd.Index(["astronaut.png"], name="sample_id"))
    boxes = {"o-face": (170.0, 20.0, 130.0, 160.0, "flag", True, "wrong_class", 0.05, "face"),
             "o-junk": (300.0, 300.0, 60.0, 40.0, "rocket", True, "spurious", 0.10, "background"),
             "o-ok": (400.0, 180.0, 60.0, 40.0, "flag", False, None, 0.90, "flag")}
    objects = pd.DataFrame([
        {"object_id": oid, "sample_id": "astronaut.png", "label": label, "x": x, "y": y, "w": w, "h": h,
         "xn": x / 512, "yn": y / 512, "wn": w / 512, "hn": h / 512, "image_width": 512, "image_height": 512,
         "annotator": "", "object_mistakes_is_issue": flagged, "object_mistakes_kind": kind,
         "object_mistakes_label_quality": quality, "object_mistakes_suggested_label": suggested}
        for oid, (x, y, w, h, label, flagged, kind, quality, suggested) in boxes.items()]).set_index("object_id")
    run_dir = tmp_path / "reports" / "boxes"
    write_run(run_dir, samples, {"run_name": "boxes", "class_names": ["face", "flag", "rocket"]}, objects=objects)
    invoke("review", "export", run_dir, "--to", "labelstudio")
    tasks = json.loads((run_dir / "review" / "labelstudio-object-tasks.json").read_text())
    assert [t["data"]["item_id"] for t in tasks] == ["o-face", "o-junk"]  # worst first; o-ok is not flagged
    assert tasks[0]["predictions"][0]["result"][0]["value"]["rectanglelabels"] == ["face"]
    assert "predictions" not in tasks[1]  # "background" is no class to pre-select
    assert tasks[1]["data"]["reason"].startswith("spurious box; ")
    assert "RectangleLabels" in (run_dir / "review" / "labelstudio-object-tasks.xml").read_text()

    invoke("review", "export", run_dir, "--to", "cvat", "--out", tmp_path / "cvat")
    xml = tmp_path / "cvat" / "cvat-review.xml"
    root = ET.parse(xml).getroot()
    shapes = {next(a.text for a in b.findall("attribute") if a.get("name") == "item_id"): b for b in root.iter("box")}
    assert {k: v.get("label") for k, v in shapes.items()} == {"o-face": "flag", "o-junk": "rocket"}
    shapes["o-face"].set("label", "face")  # the reviewer: it is a face; the other box is nothing at all
    next(a for a in shapes["o-junk"].findall("attribute") if a.get("name") == "review").text = "wrong"
    ET.ElementTree(root).write(xml, encoding="utf-8", xml_declaration=True)
    out = invoke("review", "import", run_dir, "--from", "cvat", xml).output
    ledger = review.read_ledger(run_dir)
    assert {i: (r["item_kind"], r["verdict"], r["corrected_label"]) for i, r in ledger.iterrows()} == {
        "o-face": ("object", "wrong", "face"), "o-junk": ("object", "wrong", None)}
    fixed = pd.read_csv(run_dir / "corrections" / "objects.corrected.csv", index_col="object_id")
    assert fixed["label"].to_dict() == {"o-face": "face", "o-ok": "flag"}  # the spurious box is left out
    assert fixed.loc["o-face", ["x", "y", "w", "h"]].tolist() == [170.0, 20.0, 130.0, 160.0]
    assert "corrected boxes:" in out
    assert RunResults.load(run_dir).summary["checks"]["review"]["precision_at_k"]["precision"] == 1.0


def review_slug(name: str) -> str:
    from audit.checks.review import annotator_slug

    return annotator_slug(name)


def test_bad_input_is_one_line_and_exit_2(built, tmp_path):
    run_dir = fresh_copy(built, tmp_path)["path"]
    cases = [
        (["review", "export", run_dir, "--to", "paper"], "--to must be one of labelstudio, cvat, fiftyone"),
        (["review", "export", tmp_path / "nowhere", "--to", "cvat"], "is not a label-audit run folder"),
        (["review", "export", run_dir, "--to", "labelstudio", "--url", "http://127.0.0.1:9"], "needs an API token"),
        (["review", "import", run_dir, "--from", "cvat"], "needs the file to read"),
        (["review", "import", run_dir, "--from", "cvat", tmp_path / "missing.xml"], "could not be read"),
        (["review", "import", run_dir, "--from", "labelstudio", "--api-key", "x"], "needs --url"),
        (["review", "import", run_dir, "--from", "labelstudio", "--api-key", "x", "--url", "http://127.0.0.1:9"],
         "no Label Studio project of run week1 is recorded"),
        (["review", "import", run_dir, "--from", "labelstudio", "--api-key", "x", "--url", "http://127.0.0.1:9",
          "--project", "weekly"], "could not reach the labelling tool"),
        (["review", "next", run_dir, "--to", "cvat", "--method", "coin"], "method must be one of"),
    ]
    for args, message in cases:
        result = invoke(*args, code=2)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    # answers about another run's items are refused before anything is written
    other = pd.DataFrame([{"item_id": "elsewhere/x.png", "verdict": "correct", "given_label": "1"}])
    foreign = tmp_path / "foreign.xml"
    queue = review.normalise_ledger(other).assign(filepath=str(built["manifest"].parent / "images" / "d0000.png"))
    cvat.write_cvat_xml(queue, foreign, [str(c) for c in range(10)])
    tree = ET.parse(foreign)
    next(a for a in tree.getroot().iter("attribute") if a.get("name") == "review").text = "correct"
    tree.write(foreign, encoding="utf-8", xml_declaration=True)
    before = review.read_ledger(run_dir)
    result = invoke("review", "import", run_dir, "--from", "cvat", foreign, code=2)
    assert "none of the 1 answers from cvat is about an item of run" in result.output
    pd.testing.assert_frame_equal(review.read_ledger(run_dir), before)


def test_help_explains_each_command():
    text = invoke("review", "--help").output
    for command in ("export", "import", "corrections", "next", "feedback"):
        assert command in text
    assert "LABEL_STUDIO_API_KEY" in invoke("review", "export", "--help").output
    assert "labelstudio-file" in invoke("review", "import", "--help").output

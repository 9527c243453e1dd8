"""2D map of the embeddings: UMAP with the cosine metric, seeded so a weekly report's map is stable.

Up to ``MAX_FIT_POINTS`` points (100,000) UMAP is fitted on all of them. Above, fitting them all would cost too
much (UMAP's seeded, single-threaded fit took 96 s at 100,000 512-d points and grows faster than linearly), so UMAP
is fitted on a seeded random sample of ``MAX_FIT_POINTS`` points and the others are placed on that map with the
fitted model's ``transform``, ``TRANSFORM_BATCH`` points at a time: a neighbour query among the sample's points
(answered by faiss, see :class:`_FaissNeighbours`) and a short optimisation of the new points alone (the sample's
points do not move), so the cost beyond the fit grows as ``n log n``. The settings say so (``fit_points``,
``n_transformed``). How close such a map is to a full fit is measured by ``python -m benchmarks`` at 100,000
points (a 10% sample, as at a million): the neighbourhoods kept between the two maps, each map's trustworthiness
and how well it separates the classes: with faiss's neighbour query the sampled map's class purity is 0.982 and
its trustworthiness 0.947 (full fit: 1.000 and 0.952); with UMAP's own query it was 0.931 and 0.927.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audit.config import ProjectionConfig


@dataclass
class Projection:
    """2D coordinates for the rows given, and the settings that produced them."""

    points: np.ndarray  # (n, 2) float32
    settings: dict[str, object]
    model: object | None = field(default=None, repr=False)  # the fitted UMAP, when there is one


MAX_FIT_POINTS = 100_000  # above this many points UMAP is fitted on a seeded sample of this many
TRANSFORM_BATCH = 50_000  # points placed per transform call; UMAP optimises a batch of more than 10,000 for 30
# epochs (100 below): measured 0.37 against 0.61 ms per point on 2 cores, and its documented default for large sets


def project(embeddings: np.ndarray, config: ProjectionConfig | None = None, *,
            max_fit_points: int = MAX_FIT_POINTS, transform_batch: int = TRANSFORM_BATCH) -> Projection:
    """UMAP to 2D (cosine). A fixed ``seed`` makes the map identical run to run (UMAP then runs single-threaded,
    which is its documented price for reproducibility); tiny inputs fall back to fewer neighbours. Above
    ``max_fit_points`` points the fit is on a seeded sample and the rest are placed with ``transform`` (module
    docstring)."""
    config = config or ProjectionConfig()
    n = len(embeddings)
    if n > max_fit_points:
        return _project_sampled(embeddings, config, max_fit_points, transform_batch)
    settings: dict[str, object] = {"method": "umap", "metric": "cosine", "n_neighbors": config.n_neighbors,
                                   "min_dist": config.min_dist, "seed": config.seed}
    if n < 4:
        # UMAP's spectral layout needs a few points; place tiny sets on a line so the map still shows them.
        points = np.column_stack([np.arange(n, dtype=np.float32), np.zeros(n, np.float32)])
        return Projection(points, {**settings, "method": "line (fewer than 4 samples)"})
    import umap

    neighbours = min(config.n_neighbors, n - 1)
    reducer = umap.UMAP(n_components=2, metric="cosine", n_neighbors=neighbours, min_dist=config.min_dist,
                        random_state=config.seed, init="spectral" if n > neighbours + 1 else "random")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        points = reducer.fit_transform(np.asarray(embeddings, dtype=np.float32))
    settings["n_neighbors"] = neighbours
    return Projection(np.asarray(points, dtype=np.float32), settings, model=reducer)


def _project_sampled(embeddings: np.ndarray, config: ProjectionConfig, fit_points: int, batch: int) -> Projection:
    """Fit on a seeded sample of ``fit_points`` rows, place the others with ``transform`` in batches."""
    n = len(embeddings)
    chosen = np.zeros(n, dtype=bool)
    chosen[np.random.default_rng(config.seed).choice(n, size=fit_points, replace=False)] = True
    fitted = project(np.asarray(embeddings[chosen], dtype=np.float32), config, max_fit_points=fit_points)
    points = np.empty((n, 2), dtype=np.float32)
    points[chosen] = fitted.points
    points[~chosen] = transform_in_batches(fitted.model, embeddings, ~chosen, batch)
    settings = {**fitted.settings, "fit_points": fit_points, "n_transformed": int(n - fit_points),
                "transform_batch": batch,
                "note": f"UMAP fitted on a seeded sample of {fit_points:,} of the {n:,} images; the other "
                        f"{n - fit_points:,} were placed on its map with UMAP's transform"}
    return Projection(points, settings, model=fitted.model)


class _FaissNeighbours:
    """Stands in for the fitted UMAP's pynndescent index while ``transform`` asks it for each new point's
    neighbours among the fitted points: the same answer format (indices, cosine distances), found by a faiss HNSW
    search (:func:`audit.neighbours.build_index`).

    Why: on the benchmark's 512-d data pynndescent's query returned a neighbour of another class for 4% of the
    neighbours (whatever its ``epsilon``), against 0.03% for faiss, and ``transform`` places a point at the
    weighted mean of its neighbours, so those points landed between clusters (class purity of the map 0.93
    against 1.0 for a full fit, see ``python -m benchmarks``).
    """

    def __init__(self, fitted: np.ndarray, original: object) -> None:
        from audit.neighbours import build_index, plan_index

        self._angular_trees = getattr(original, "_angular_trees", True)
        self.index = build_index(_unit(fitted), plan_index(len(fitted), "hnsw", **TRANSFORM_HNSW))

    def query(self, queries: np.ndarray, k: int, epsilon: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        similarities, indices = self.index.search(_unit(queries), k)
        return indices.astype(np.int32), np.clip(1.0 - similarities, 0.0, 2.0).astype(np.float32)


TRANSFORM_HNSW = {"hnsw_m": 16, "ef_construction": 40, "ef_search": 64}


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    x /= np.where(norms > 0, norms, np.float32(1.0))
    x[~x.any(axis=1), 0] = 1.0  # a zero vector has no direction; give it one so the search stays defined
    return x


def transform_in_batches(model: object, embeddings: np.ndarray, rows: np.ndarray, batch: int = TRANSFORM_BATCH,
                         ) -> np.ndarray:
    """``model.transform`` of ``embeddings[rows]`` (a boolean mask), ``batch`` rows per call so the neighbour
    graph of one call stays small; float32 ``(rows.sum(), 2)``. When the model searches an index (fits above
    4,096 points) the neighbours come from faiss (:class:`_FaissNeighbours`); the model is left as it was."""
    wanted = np.flatnonzero(rows)
    out = np.empty((len(wanted), 2), dtype=np.float32)
    original = getattr(model, "_knn_search_index", None)
    swap = original is not None and not getattr(model, "_small_data", True) and len(wanted)
    if swap:
        model._knn_search_index = _FaissNeighbours(model._raw_data, original)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for start in range(0, len(wanted), batch):
                part = wanted[start:start + batch]
                out[start:start + len(part)] = model.transform(np.asarray(embeddings[part], dtype=np.float32))
    finally:
        if swap:
            model._knn_search_index = original
    return out


# --------------------------------------------------------------------------------------- weekly reuse

MODEL_FILE = "projection.joblib"
MAX_SAVED_MODEL = 200_000  # a UMAP fitted on up to this many points is kept, for next week's transform
MAX_NEW_SHARE = 0.5  # with more new points than this share, a fresh fit is better than placing them


def _fits(config: ProjectionConfig) -> dict[str, object]:
    return {"metric": "cosine", "n_neighbors": config.n_neighbors, "min_dist": config.min_dist, "seed": config.seed}


def reusable(previous_summary: dict, config: ProjectionConfig, embedder_key: str | None) -> str | None:
    """Why the previous run's map cannot be reused here, or None when it can (same embedder, same settings)."""
    settings = previous_summary.get("projection") or {}
    if settings.get("method") not in ("umap", "umap (reused)"):
        return "the previous run has no UMAP map"
    if embedder_key is None or (previous_summary.get("embedder") or {}).get("cache_key") != embedder_key:
        return "the previous run used another embedder"
    wanted = _fits(config)
    if any(settings.get(k, wanted[k]) != v for k, v in wanted.items() if k != "n_neighbors"):
        return "the previous run's map used other UMAP settings"
    return None


def project_with_reuse(embeddings: np.ndarray, hashes: list[str], config: ProjectionConfig,
                       previous: object | None, embedder_key: str | None, *, model_file: str = MODEL_FILE,
                       previous_points: object | None = None) -> tuple[Projection, object | None]:
    """The map, reusing last week's where possible; returns the projection and the UMAP model to keep with the
    run (a fitted model, or the path of the previous run's model file when its map was reused).

    * every image's content was on the previous map (same embedder and settings): its coordinates, no UMAP;
    * a few new images (at most half): the previous run's saved UMAP model places them with ``transform``, the
      others keep their coordinates, so last week's map stays comparable;
    * otherwise a fresh, seeded fit.
    ``previous`` is a :class:`audit.results.RunResults` (or None); the settings say what was reused.
    """
    why = "no previous run" if previous is None else (
        "reuse is off" if not config.reuse else reusable(previous.summary, config, embedder_key))
    if why is None:
        old = previous.samples if previous_points is None else previous_points
        if old is not None and "content_hash" in old and {"umap_x", "umap_y"} <= set(old.columns):
            located = old[np.isfinite(old["umap_x"].to_numpy(float)) & (old["content_hash"].astype(str) != "")]
            known = dict(zip(located["content_hash"].astype(str),
                             located[["umap_x", "umap_y"]].to_numpy(np.float32), strict=True))
            have = np.array([bool(h) and h in known for h in hashes])
            base = {**_fits(config), "method": "umap (reused)", "from_run": previous.name,
                    "n_reused": int(have.sum())}
            saved = previous.path / model_file
            carried = saved if saved.is_file() else None  # the model goes on with the map it made
            if have.all():
                points = np.stack([known[h] for h in hashes]) if hashes else np.empty((0, 2), np.float32)
                return Projection(points, {**base, "n_placed": 0,
                                           "note": f"every image was on the map of run {previous.name}"}), carried
            if (~have).mean() <= MAX_NEW_SHARE and saved.is_file():
                import joblib

                model = joblib.load(saved)
                points = np.full((len(hashes), 2), np.nan, np.float32)
                if have.any():
                    points[have] = np.stack([known[h] for h, ok in zip(hashes, have, strict=True) if ok])
                points[~have] = transform_in_batches(model, embeddings, ~have)
                note = (f"{int(have.sum()):,} images kept their place on run {previous.name}'s map; "
                        f"{int((~have).sum()):,} new ones were placed with its UMAP model")
                return Projection(points, {**base, "n_placed": int((~have).sum()), "note": note}), carried
            why = ("more than half of the images are new" if (~have).mean() > MAX_NEW_SHARE
                   else f"run {previous.name} kept no UMAP model")
    projection = project(embeddings, config)
    projection.settings["not_reused"] = why
    model = getattr(projection, "model", None)
    fitted_on = len(getattr(model, "embedding_", ()))  # a map fitted on a sample keeps the sample's model
    return projection, model if model is not None and fitted_on <= MAX_SAVED_MODEL else None


def save_model(model: object, folder: Path, name: str = MODEL_FILE) -> None:
    """Keep the UMAP model in the run folder for next week's ``transform``: a fitted model is written
    (atomically); a previous run's model file, whose map this run reused, is linked (or copied)."""
    import shutil

    from audit.results import _atomic_save

    target = Path(folder) / name
    if isinstance(model, Path):
        if model.resolve() == target.resolve():
            return
        _atomic_save(target, lambda tmp: _link_or_copy(model, Path(tmp), shutil))
        return
    import joblib

    _atomic_save(target, lambda tmp: joblib.dump(model, tmp))


def _link_or_copy(source: Path, tmp: Path, shutil) -> None:
    import os

    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)

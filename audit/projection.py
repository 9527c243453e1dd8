"""2D map of the embeddings: UMAP with the cosine metric, seeded so a weekly report's map is stable."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from audit.config import ProjectionConfig


@dataclass
class Projection:
    """2D coordinates for the rows given, and the settings that produced them."""

    points: np.ndarray  # (n, 2) float32
    settings: dict[str, object]


def project(embeddings: np.ndarray, config: ProjectionConfig | None = None) -> Projection:
    """UMAP to 2D (cosine). A fixed ``seed`` makes the map identical run to run (UMAP then runs single-threaded,
    which is its documented price for reproducibility); tiny inputs fall back to fewer neighbours."""
    config = config or ProjectionConfig()
    n = len(embeddings)
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
    return Projection(np.asarray(points, dtype=np.float32), settings)

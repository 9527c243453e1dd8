"""The Ray engine on a real two-node Ray cluster on this machine (``ray_cluster``): the same vectors, problems and
cache as the local engine, and a worker node killed mid-run loses no finished work.

Both engines run the tiny open_clip checkpoint of ``tiny_clip`` on the CPU in fp32, so the local engine's output
is an independent reference computed in this process, not on the cluster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.config import EmbedderConfig
from audit.embeddings import EmbeddingCache, build_embedder, embed, embed_samples, load_clip
from audit.embeddings.ray_engine import embed_samples_ray
from audit.sources import TRUNCATED_IMAGE
from tests.conftest import write_digit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # a hung cluster fails, never blocks CI

N_FIRST, N_SECOND = 200, 256  # digits for the equivalence test, then other digits for the worker-kill test


@pytest.fixture(scope="module", autouse=True)
def _disconnect_at_the_end():
    """The tests share one driver connection (connecting costs seconds); it ends with the module."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def digits_on_disk(tmp_path_factory, digit_images) -> pd.DataFrame:
    """Real digit scans as 32x32 PNGs (the tiny model's input size), plus one truncated PNG at the end."""
    images, targets = digit_images
    folder = tmp_path_factory.mktemp("ray-digits")
    files = [write_digit(folder / f"{i:04d}_{targets[i]}.png", images[i]) for i in range(N_FIRST + N_SECOND)]
    broken = folder / "broken.png"
    whole = files[0].read_bytes()
    broken.write_bytes(whole[: len(whole) // 2])
    files.append(broken)
    index = pd.Index([f.name for f in files], name="sample_id")
    return pd.DataFrame({"filepath": [str(f) for f in files]}, index=index)


@pytest.fixture(scope="module")
def local_reference(tiny_clip, digits_on_disk):
    """The local engine's outcome for every image: the reference the Ray engine must reproduce."""
    config_file, checkpoint = tiny_clip
    embedder = load_clip(str(config_file), str(checkpoint), "cpu", "fp32")
    return embedder, embed_samples(digits_on_disk, embedder, use_cache=False, workers=0, progress=False)


def _config(tiny_clip) -> EmbedderConfig:
    config_file, checkpoint = tiny_clip
    return EmbedderConfig(kind="clip", model=str(config_file), pretrained=str(checkpoint), device="cpu",
                          precision="fp32", engine="ray")


def _reference_rows(reference, positions: np.ndarray) -> np.ndarray:
    rows = reference.rows[positions]
    assert (rows >= 0).all()
    return reference.vectors[rows]


def test_ray_engine_gives_the_local_engines_vectors_problems_and_cache(ray_cluster_launched, tiny_clip, digits_on_disk,
                                                                       local_reference, tmp_path: Path,
                                                                       ray_cluster) -> None:
    """A run stopped after three batches keeps them; the re-run embeds only the rest; together they give the local
    engine's vectors, problem codes and pixel statistics, in a cache folder the local engine reads as its own."""
    import ray

    embedder, reference = local_reference
    samples = pd.concat([digits_on_disk.iloc[:N_FIRST], digits_on_disk.iloc[[-1]]])  # 200 digits + broken.png
    cache = tmp_path / "cache"

    # A first run stopped after three batches (as by Ctrl-C): what it finished is in the cache.
    def stop_after_three_batches(done: int, to_do: int, node: str) -> None:
        if done >= 48:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_samples_ray(samples, _config(tiny_clip), cache_dir=cache, address=ray_cluster.address, num_actors=1,
                          cpus_per_actor=1, batch_size=16, flush_every=16, progress=False,
                          on_batch=stop_after_three_batches)
    kept = len(EmbeddingCache(cache, embedder).problems)  # opened with the *local* embedder: same cache folder
    assert 48 <= kept < len(samples)
    assert ray_cluster.alive() and not ray.is_initialized(), "the engine disconnects; it never stops the cluster"

    # The rest, on a connection the caller holds (the engine uses it, and leaves it open).
    ray.init(address=ray_cluster.address)
    outcome = embed_samples_ray(samples, _config(tiny_clip), cache_dir=cache, num_actors=1, cpus_per_actor=1,
                                batch_size=16, progress=False)
    assert ray.is_initialized()
    assert (outcome.n_cached, outcome.n_embedded) == (kept, len(samples) - kept)
    assert outcome.cluster["nodes"] == 2
    expected_rows = np.r_[np.arange(N_FIRST), -1]  # broken.png has no vector
    np.testing.assert_array_equal(outcome.rows, expected_rows)
    np.testing.assert_allclose(outcome.vectors, _reference_rows(reference, np.arange(N_FIRST)), atol=1e-6, rtol=0)
    assert outcome.problems == {"broken.png": [TRUNCATED_IMAGE]}
    positions = np.r_[np.arange(N_FIRST), len(digits_on_disk) - 1]
    np.testing.assert_allclose(outcome.stats, reference.stats[positions], atol=1e-5, equal_nan=True)
    assert outcome.hashes == [reference.hashes[i] for i in positions]
    assert outcome.embedder["name"] == embedder.describe()["name"]

    # The local engine finds everything the Ray engine wrote, under the same key, with the same problems.
    local = embed_samples(samples, embedder, cache_dir=cache, workers=0, progress=False)
    assert (local.n_cached, local.n_embedded) == (len(samples), 0)
    np.testing.assert_array_equal(local.vectors, outcome.vectors)
    assert local.problems == outcome.problems


def test_worker_node_killed_mid_run_loses_no_finished_work(tiny_clip, digits_on_disk, local_reference, tmp_path: Path,
                                                           monkeypatch, ray_cluster) -> None:
    """The worker node (its raylet, agents and workers) is SIGKILLed right after it hands over its first batch. The
    run still finishes, with the right vectors; what the worker had finished stays in the cache and is not embedded
    again; a re-run embeds nothing."""
    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        ray.init(address=ray_cluster.address)
    embedder, reference = local_reference
    positions = np.arange(N_FIRST, N_FIRST + N_SECOND)
    samples = digits_on_disk.iloc[positions]
    cache = tmp_path / "cache"
    # Start the work only once both actors are up (one per node), so the worker node really holds batches when it
    # dies: otherwise the head's actor, up first, could finish everything alone.
    monkeypatch.setattr(DataContext.get_current(), "wait_for_min_actors_s", 120)
    seen: dict[str, object] = {}

    def kill_worker_after_its_first_batch(done: int, to_do: int, node: str) -> None:
        if "head" not in seen:
            nodes = {n["NodeID"]: "node:__internal_head__" in n["Resources"] for n in ray.nodes() if n["Alive"]}
            seen["head"] = next(node_id for node_id, is_head in nodes.items() if is_head)
            assert ray.get_runtime_context().get_node_id() == seen["head"], "the driver must not sit on the worker"
        if node != seen["head"] and "killed_at" not in seen:
            seen["worker"], seen["killed_at"] = node, done
            seen["on_disk_at_kill"] = len(EmbeddingCache(cache, embedder).problems)
            ray_cluster.kill_worker()

    outcome = embed_samples_ray(samples, _config(tiny_clip), cache_dir=cache,
                                num_actors=2, cpus_per_actor=1, batch_size=8, flush_every=8, progress=False,
                                on_batch=kill_worker_after_its_first_batch)
    assert "killed_at" in seen, f"the worker node never handed over a batch: {seen}"
    assert seen["killed_at"] < N_SECOND, "killed mid-run, with work left"
    assert seen["on_disk_at_kill"] == seen["killed_at"], "every finished batch was in the cache when the node died"
    assert ray_cluster.workers[0].poll() is not None, "the worker node is dead"
    # The run finished, every image once, with the local engine's vectors.
    assert (outcome.n_cached, outcome.n_embedded) == (0, N_SECOND)
    np.testing.assert_allclose(outcome.vectors, _reference_rows(reference, positions), atol=1e-6, rtol=0)
    # Each image was handed over once: the dead worker's finished batch (and any it had already sent to the
    # driver's node) counts for the worker, the rest for the head.
    per_node = outcome.cluster["embedded_per_node"]
    assert set(per_node) == {seen["head"], seen["worker"]} and per_node[seen["worker"]] >= 8
    assert sum(per_node.values()) == N_SECOND
    assert len(EmbeddingCache(cache, embedder).problems) == N_SECOND
    # A re-run, through the config as a run makes it, finds everything in the cache and sends nothing to the cluster.
    config = _config(tiny_clip).model_copy(update={"ray_address": ray_cluster.address, "cache_dir": cache})
    again, description = embed(samples, config, progress=False)
    assert (again.n_cached, again.n_embedded) == (N_SECOND, 0)
    assert description["engine"] == "ray" and description["cache_key"] == embedder.cache_key
    assert description["ray"]["embedded_per_node"] == {} and not description["model_loaded"]
    np.testing.assert_array_equal(again.vectors, outcome.vectors)


def test_config_names_the_engine_and_embed_runs_it(digit_folder: Path, tmp_path: Path) -> None:
    from pydantic import ValidationError

    assert (EmbedderConfig().engine, EmbedderConfig().ray_address) == ("local", None)
    with pytest.raises(ValidationError, match="engine"):
        EmbedderConfig(engine="spark")
    files = sorted(digit_folder.rglob("*.png"))
    samples = pd.DataFrame({"filepath": [str(f) for f in files]}, index=pd.Index([f.name for f in files]))
    config = EmbedderConfig(kind="pixels", cache_dir=tmp_path / "cache")
    outcome, description = embed(samples, config, progress=False)
    assert description["engine"] == "local" and outcome.n_embedded == len(files)
    direct = embed_samples(samples, build_embedder(config), use_cache=False, workers=0, progress=False)
    np.testing.assert_array_equal(outcome.vectors, direct.vectors)
    assert (tmp_path / "cache" / description["cache_key"]).is_dir(), "the config's cache folder was used"

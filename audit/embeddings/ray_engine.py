"""The Ray engine: the embedding stage as Ray Data ``map_batches`` over a pool of actors, one model per actor (a
GPU each when the cluster has GPUs), for datasets too big for one machine or GPUs that live on other machines.

It keeps the local engine's contract (:func:`audit.embeddings.local.embed_samples`): the same vectors in sample
order, the same problem codes and pixel statistics, the same content-addressed cache folder, so the rest of a run
cannot tell which engine ran.

Where each step runs, and why:

- **Hashing** runs on the driver (the machine that calls this), four threads, as in the local engine: the driver
  needs every hash to know what the cache already has, and hashing reads a file once at disk speed, far cheaper than
  decoding and embedding it.
- **Embedding** runs in the actors: each reads its batch's images by path (so the images must be at the same paths
  on every node: shared storage), decodes them with :func:`audit.sources.load_image` and the embedder's own
  preprocess, and runs the embedder's batched forward: the local engine's code, on the cluster.
- **The cache is written by the driver**, as each finished batch streams in (``iter_batches``), in atomic shards
  every ``flush_every`` images or ``flush_seconds``: the cache folder needs to be reachable only from the driver,
  not from every node. A worker that dies loses only the batches it had not yet handed over: Ray Data restarts the
  actor (on any node with room) and retries its unfinished batches, so the run still finishes; and a run that is
  stopped keeps every batch the driver has written, so a re-run embeds only the rest.

The embedder's identity (its cache key) is resolved where the model will run: the first time, one Ray task on the
cluster builds the embedder with an actor's resources and reports it (on the driver instead when nothing about it
can depend on the node: pixels, or CPU with an explicit precision); later runs find it in the cache's
``identities.json`` (recorded like the local engine's), and every actor checks that its model matches it.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from audit.embeddings.cache import DEFAULT_CACHE_DIR, EmbeddingCache, embedder_request, lookup_identity, record_identity
from audit.embeddings.embedders import EmbedderError
from audit.embeddings.local import EmbeddingOutcome, _batches, _stats_by_hash, hash_files, per_sample_outputs

if TYPE_CHECKING:
    from audit.config import EmbedderConfig

# CPUs given to one actor by default: enough decoding threads to keep a model busy, without one actor taking a
# whole big node (each actor holds its own copy of the model).
DEFAULT_CPUS_PER_ACTOR = 4


@dataclass
class RayEmbeddingOutcome(EmbeddingOutcome):
    """The local engine's outcome, plus the embedder's description (the model ran on the cluster, not here) and
    how the cluster was used."""

    embedder: dict[str, Any] = field(default_factory=dict)
    cache_key: str = ""
    cluster: dict[str, Any] = field(default_factory=dict)


@dataclass
class ResolvedEmbedder:
    """What the driver knows of the embedder that runs in the actors: enough to open its cache folder and describe
    it (``cache_key``, ``dim``, ``describe()``), without loading the model here."""

    cache_key: str
    dim: int
    description: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.description.get("name", "embedder"))

    def describe(self) -> dict[str, Any]:
        return dict(self.description)


# ------------------------------------------------------------------------------------------------ on the cluster


def _probe_embedder(config: dict[str, Any]) -> dict[str, Any]:
    """Build the embedder where the actors will run and report its identity (runs as a Ray task)."""
    from audit.config import EmbedderConfig
    from audit.embeddings.embedders import build_embedder

    embedder = build_embedder(EmbedderConfig.model_validate(config))
    return {"cache_key": embedder.cache_key, "dim": embedder.dim, "describe": embedder.describe(),
            "kind": embedder.kind, "device": embedder.device, "precision": embedder.identity.get("precision")}


class EmbedBatches:
    """The Ray Data callable class: one embedder per actor, built once; each call embeds one batch of paths.

    The batch is decoded by the local engine's code (a thread per CPU of the actor, Pillow releasing the GIL),
    then run through the model at once. Unreadable images come back with a zero vector, ``unreadable`` set and
    their problem codes, exactly what the local engine caches for them.
    """

    def __init__(self, config: dict[str, Any], cache_key: str, threads: int) -> None:
        import ray
        import torch

        from audit.config import EmbedderConfig
        from audit.embeddings.embedders import build_embedder

        self.node = ray.get_runtime_context().get_node_id()
        self.threads = max(1, threads)
        torch.set_num_threads(self.threads)
        self.embedder = build_embedder(EmbedderConfig.model_validate(config))
        if self.embedder.cache_key != cache_key:
            raise EmbedderError(
                f"the embedder built on node {socket.gethostname()} has cache key {self.embedder.cache_key}, not "
                f"{cache_key} as resolved for this run ({self.embedder.describe()}); every node needs the same "
                "weights file, model config and library versions")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from audit.sources.images import STAT_KEYS

        paths = [str(p) for p in batch["path"]]
        vectors = np.zeros((len(paths), self.embedder.dim), np.float32)
        stats = np.full((len(paths), len(STAT_KEYS)), np.nan, np.float32)
        problems = [""] * len(paths)
        unreadable = np.zeros(len(paths), dtype=bool)
        workers = self.threads if self.threads > 1 else 0
        for indices, pixels, infos in _batches(paths, self.embedder, len(paths) or 1, workers, "threads"):
            if pixels is not None:
                vectors[indices] = self.embedder.forward(pixels)
            for index, codes, bad, image_stats in infos:
                problems[index] = ";".join(codes)
                unreadable[index] = bad
                if image_stats is not None:
                    stats[index] = image_stats
        return {"key": np.asarray(batch["key"]), "vector": vectors, "problems": np.array(problems, dtype=object),
                "unreadable": unreadable, "stats": stats, "node": np.array([self.node] * len(paths), dtype=object)}


# ------------------------------------------------------------------------------------------------ on the driver


@contextmanager
def ray_connection(address: str | None) -> Iterator[None]:
    """Connected to Ray for the duration: reuse the caller's connection if there is one; otherwise connect to
    ``address`` (``"auto"``, ``"host:6379"``, ``"ray://host:10001"``; ``None``: ``RAY_ADDRESS``, else a new local
    instance) and disconnect at the end. ``ray.shutdown()`` stops only what this process started (the local
    instance), never a cluster it connected to."""
    import ray

    if ray.is_initialized():
        yield
        return
    if address and address.startswith("ray://"):
        try:
            import grpc  # noqa: F401  (Ray Client's transport)
        except ImportError as exc:
            raise EmbedderError(f"--ray-address {address} uses Ray Client, which needs `pip install 'ray[client]'`; "
                                "or run on a cluster node with --ray-address auto") from exc
    starts_local = address is None and not os.environ.get("RAY_ADDRESS")
    options: dict[str, Any] = {"include_dashboard": False} if starts_local else {}
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise EmbedderError(f"could not connect to the Ray cluster at {address or 'a new local instance'}: "
                            f"{str(exc).splitlines()[0][:300]}") from exc
    try:
        yield
    finally:
        ray.shutdown()


def _nodes() -> list[dict[str, float]]:
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def _plan_actors(config: EmbedderConfig, cpus_per_actor: float | None,
                 num_actors: int | None) -> tuple[str, float, int, int]:
    """``(device, cpus per actor, GPUs per actor, most actors)`` for this cluster."""
    nodes = _nodes()
    gpus = sum(node.get("GPU", 0) for node in nodes)
    if config.device.startswith("cuda") and not gpus:
        raise EmbedderError(f"device {config.device!r} requested but the Ray cluster has no GPUs; use --device cpu")
    use_gpus = bool(gpus) and config.device != "cpu"
    if use_gpus:
        gpu_nodes = [n for n in nodes if n.get("GPU", 0) >= 1]
        fit = min(n.get("CPU", 0) // n["GPU"] for n in gpu_nodes) if gpu_nodes else 1
        cpus = cpus_per_actor or max(1.0, min(DEFAULT_CPUS_PER_ACTOR, fit))
        most = int(sum(n.get("GPU", 0) for n in gpu_nodes))
    else:
        biggest = max((n.get("CPU", 0) for n in nodes), default=1)
        cpus = cpus_per_actor or max(1.0, min(DEFAULT_CPUS_PER_ACTOR, biggest))
        most = int(sum(n.get("CPU", 0) // cpus for n in nodes))
    return ("cuda" if use_gpus else "cpu"), float(cpus), (1 if use_gpus else 0), max(1, num_actors or most)


def _resolve(config: EmbedderConfig, root: Path, use_cache: bool, cpus: float, gpus: int,
             runtime_env: dict[str, Any] | None) -> tuple[ResolvedEmbedder, dict[str, Any]]:
    """The embedder's identity and the config the actors build it from (device and precision pinned, so every
    actor, on whatever node, builds the same thing). A CLIP identity an earlier run recorded is reused; one that
    cannot depend on the node (pixels; CPU with an explicit precision) is built here; otherwise one Ray task
    builds the embedder on the cluster, with an actor's resources, and reports it."""
    import ray

    request = embedder_request(config)
    known = lookup_identity(root, request) if use_cache and config.kind == "clip" else None
    if known is not None:
        describe = known["describe"]
        found = {"cache_key": known["cache_key"], "dim": known["dim"], "describe": describe,
                 "kind": describe.get("kind", config.kind), "device": describe.get("device", config.device),
                 "precision": describe.get("precision")}
    elif config.kind == "pixels" or (config.device == "cpu" and config.precision != "auto"):
        found = _probe_embedder(config.model_dump(mode="json"))  # nothing node-specific: resolved here
    else:  # the device (a GPU) or the precision (bf16 if the CPU has it) depends on the node: resolve it there
        probe = ray.remote(_probe_embedder).options(num_cpus=cpus, num_gpus=gpus, runtime_env=runtime_env)
        found = ray.get(probe.remote(config.model_dump(mode="json")))
    resolved = ResolvedEmbedder(found["cache_key"], int(found["dim"]), dict(found["describe"]))
    if use_cache and known is None:
        record_identity(root, request, resolved)
    pinned = {"kind": found["kind"], "device": found["device"]}
    if found["kind"] == "clip" and found.get("precision"):
        pinned["precision"] = found["precision"]
    return resolved, config.model_copy(update=pinned).model_dump(mode="json")


def embed_samples_ray(
    samples: pd.DataFrame,
    embedder_config: EmbedderConfig,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    batch_size: int = 64,
    address: str | None = None,
    num_actors: int | None = None,
    progress: Any = True,
    cpus_per_actor: float | None = None,
    hashes: list[str | None] | None = None,
    flush_every: int = 1024,
    flush_seconds: float = 30.0,
    runtime_env: dict[str, Any] | None = None,
    on_batch: Callable[[int, int, str], None] | None = None,
) -> RayEmbeddingOutcome:
    """Embed every sample whose file can be decoded, on a Ray cluster; cached images are not sent.

    Same contract as :func:`audit.embeddings.local.embed_samples` (vectors in sample order, ``rows``, ``hashes``,
    problems found while decoding, pixel statistics, ``n_cached``, ``n_embedded``, timings), plus the embedder's
    description. ``address``: see :func:`ray_connection`. ``num_actors``: a fixed pool of that many models
    (default: an autoscaling pool of 1 up to one per GPU, or one per ``cpus_per_actor`` CPUs of the cluster).
    ``cpus_per_actor``: CPUs (decoding threads, and torch threads on CPU) per actor, default 4 or what a node
    has. ``device`` in the config: ``auto`` uses the cluster's GPUs when it has some (``cuda`` on every actor),
    ``cpu`` never does. ``runtime_env``: passed to Ray for the actors (e.g. ``{"py_modules": [...]}``), when
    label-audit is not installed on the nodes. ``on_batch(done, to_do, node_id)`` is called after each finished
    batch has been recorded in the cache (written once ``flush_every`` images or ``flush_seconds`` have gathered),
    with the Ray node that embedded it.
    """
    import ray
    import ray.data

    from audit.progress import as_progress
    from audit.sources import UNREADABLE

    if embedder_config.kind not in ("clip", "pixels", "auto"):
        raise EmbedderError(f"embedder kind {embedder_config.kind!r} does not compute embeddings")
    reporter = as_progress(progress)
    started = time.perf_counter()
    paths = samples["filepath"].astype(str).tolist()
    if hashes is None:
        hashes = hash_files(paths, reporter)
    timings = {"hash": time.perf_counter() - started}
    root = Path(cache_dir or DEFAULT_CACHE_DIR)
    with ray_connection(address):
        step = time.perf_counter()
        device, cpus, gpus, most = _plan_actors(embedder_config, cpus_per_actor, num_actors)
        resolved, actor_config = _resolve(embedder_config.model_copy(update={"device": device}), root, use_cache,
                                          cpus, gpus, runtime_env)
        timings["resolve"] = time.perf_counter() - step
        cache = (EmbeddingCache(root, resolved, flush_every=flush_every, flush_seconds=flush_seconds)
                 if use_cache else None)
        results: dict[str, tuple[np.ndarray | None, str]] = {}
        todo: list[dict[str, str]] = []
        stats_only: list[str] = []
        for path, key in zip(paths, hashes, strict=True):
            if key is None or key in results:
                continue  # missing file, or a duplicate of content already planned
            if cache is not None and key in cache:
                results[key] = cache.get(key)
                if cache.stats(key) is None and not set(results[key][1].split(";")) & UNREADABLE:
                    stats_only.append(path)
            else:
                results[key] = (None, "")
                todo.append({"key": key, "path": path})
        n_cached = len(results) - len(todo)
        image_stats: dict[str, np.ndarray] = {}
        step = time.perf_counter()
        cluster: dict[str, Any] = {"device": device, "cpus_per_actor": cpus, "gpus_per_actor": gpus,
                                   "actors": num_actors or [1, most], "nodes": len(_nodes()), "embedded_per_node": {}}
        per_node: dict[str, int] = cluster["embedded_per_node"]
        try:
            if todo:
                from ray.data import ActorPoolStrategy

                pool = ActorPoolStrategy(size=num_actors) if num_actors else ActorPoolStrategy(min_size=1,
                                                                                              max_size=most)
                blocks = min(max(1, math.ceil(len(todo) / batch_size)), 4096)
                dataset = ray.data.from_items(todo, override_num_blocks=blocks).map_batches(
                    EmbedBatches, batch_size=batch_size, batch_format="numpy", compute=pool, num_cpus=cpus,
                    num_gpus=gpus or None, runtime_env=runtime_env,
                    fn_constructor_kwargs={"config": actor_config, "cache_key": resolved.cache_key,
                                           "threads": int(cpus)})
                bar = reporter.bar(len(todo), f"embedding on Ray ({resolved.name})", "img")
                done = 0
                with _quiet_ray_data(), _explained_errors():
                    batches = iter(dataset.iter_batches(batch_size=None, batch_format="numpy"))
                    try:
                        for out in batches:
                            for key, vector, problem_text, bad, stats in zip(
                                    out["key"], out["vector"], out["problems"], out["unreadable"], out["stats"],
                                    strict=True):
                                key, problem_text = str(key), str(problem_text)
                                kept = None if bad else np.asarray(vector, np.float32)
                                found = stats if np.isfinite(stats).any() else None
                                results[key] = (kept, problem_text)
                                if found is not None:
                                    image_stats[key] = found
                                if cache is not None:
                                    cache.put(key, kept, problem_text, bool(bad), found)
                            nodes, counts = np.unique(out["node"].astype(str), return_counts=True)
                            for node, count in zip(nodes.tolist(), counts.tolist(), strict=True):
                                per_node[node] = per_node.get(node, 0) + count
                            node = nodes[0] if len(nodes) == 1 else ""  # a block is one actor's output
                            done += len(out["key"])
                            bar.update(len(out["key"]))
                            if on_batch is not None:
                                on_batch(done, len(todo), node)
                    finally:  # stopped early (an error, Ctrl-C): end the execution and release its actors now
                        close = getattr(batches, "close", None)
                        if close is not None:
                            close()
                bar.close()
        finally:
            if cache is not None:
                cache.flush()
        timings["embed"] = time.perf_counter() - step
    if stats_only:  # cache entries from before pixel statistics were kept: decode once more, here, without a model
        image_stats.update(_stats_by_hash(stats_only, paths, hashes, max(1, min(4, len(stats_only)))))
    matrix, rows, problems, stats_matrix = per_sample_outputs(samples.index, hashes, results, image_stats, cache,
                                                              resolved.dim)
    timings["total"] = time.perf_counter() - started
    return RayEmbeddingOutcome(vectors=matrix, rows=rows, hashes=hashes, problems=problems, n_cached=n_cached,
                               n_embedded=len(todo), timings=timings, stats=stats_matrix, model_loaded=bool(todo),
                               embedder=resolved.describe(), cache_key=resolved.cache_key, cluster=cluster)


@contextmanager
def _explained_errors() -> Iterator[None]:
    """An actor that cannot start (missing weights or package on a node, a different model) fails the run with
    Ray's long error; say what it means, as the local engine would."""
    import ray

    try:
        yield
    except ray.exceptions.RayError as exc:
        text = str(exc)
        marker = "EmbedderError: "
        if marker in text:
            reason = text[text.rindex(marker) + len(marker):].splitlines()[0]
            raise EmbedderError(f"the Ray actors could not build the embedder: {reason}") from exc
        if "No module named 'audit'" in text:
            raise EmbedderError("label-audit is not installed on the Ray cluster's nodes: install it there (the same "
                                "version), or pass runtime_env={'py_modules': [...]}") from exc
        raise


@contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """Ray Data's own progress bars off (the run has its own), restored afterwards; its log lines stay."""
    from ray.data import DataContext

    context = DataContext.get_current()
    before = context.enable_progress_bars
    context.enable_progress_bars = False
    try:
        yield
    finally:
        context.enable_progress_bars = before

"""Batch prediction on a dask.distributed cluster: the same `prediction.predict`, one model per worker.

The client reads each image and sends the array; a worker predicts it with the model its plugin
loaded once (from the .keras file's bytes, so workers need no shared file system, only the same
napari-unet installation) and returns the result for the client to write. At most a few images per
worker are in flight, so a large folder never sits in the client's memory at once.

Threads: dask sets OMP_NUM_THREADS=1 in workers but TensorFlow ignores it, so the plugin sets
TensorFlow's own pools before the first op: intra-op = the worker's dask thread count, inter-op = 1.
`local:N` starts N worker processes with cores // N threads each, so workers × threads ≈ cores; on a
real cluster the admin's `--nthreads` (or dask-jobqueue's cores / processes) decides the same way.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from napari_unet.errors import NapariUNetError

PLUGIN_NAME = "napari-unet-model"
# Images sent ahead per worker: enough to keep a worker busy while the client reads and writes.
IN_FLIGHT_PER_WORKER = 2
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds to reach a scheduler and to see its first worker


@dataclass(frozen=True)
class SchedulerChoice:
    """Where to run: `address` of an existing scheduler, its `scheduler_file` (the JSON `dask scheduler
    --scheduler-file` writes, the usual way on SLURM), or `n_local_workers` processes started here."""

    address: str | None = None
    n_local_workers: int = 0
    scheduler_file: str | None = None


def parse_scheduler(text: str) -> SchedulerChoice:
    """'local', 'local:N', a scheduler file (*.json) or an address ('tcp://host:8786') -> SchedulerChoice."""
    text = text.strip()
    if text == "local" or text.startswith("local:"):
        count = text.partition(":")[2] or str(max(1, (os.cpu_count() or 1) // 2))
        if not count.isdigit() or int(count) < 1:
            raise NapariUNetError(f"--scheduler {text}: the number of local workers must be a whole number >= 1, "
                                  "e.g. local:2")
        return SchedulerChoice(n_local_workers=int(count))
    if not text:
        raise NapariUNetError("--scheduler is empty: give a scheduler address (tcp://host:8786) or local:N")
    if text.endswith(".json"):
        if not os.path.isfile(text):
            raise NapariUNetError(f"--scheduler {text}: no such scheduler file; start the scheduler with "
                                  f"'dask scheduler --scheduler-file {text}' first (on a shared file system)")
        return SchedulerChoice(scheduler_file=text)
    return SchedulerChoice(address=text)


@contextmanager
def cluster_client(choice: SchedulerChoice, timeout: float = DEFAULT_CONNECT_TIMEOUT):
    """A connected distributed.Client with at least one worker; a local cluster is closed on exit.

    Raises NapariUNetError when the scheduler cannot be reached or has no worker within `timeout` s.
    """
    from distributed import Client, LocalCluster

    cluster = None
    if choice.n_local_workers:
        threads = max(1, (os.cpu_count() or 1) // choice.n_local_workers)
        cluster = LocalCluster(n_workers=choice.n_local_workers, threads_per_worker=threads, processes=True,
                               dashboard_address=None)
        where = f"a local cluster of {choice.n_local_workers} worker(s)"
    else:
        where = f"the dask scheduler at '{choice.address or choice.scheduler_file}'"
    try:
        try:
            if choice.scheduler_file is not None:
                client = Client(scheduler_file=choice.scheduler_file, timeout=f"{timeout}s")
            else:
                client = Client(cluster if cluster is not None else choice.address, timeout=f"{timeout}s")
        except (OSError, TimeoutError) as exc:
            raise NapariUNetError(
                f"cannot reach {where} within {timeout:g} s ({type(exc).__name__}): check that the scheduler is "
                "running and the address is right (e.g. tcp://host:8786), or use --scheduler local:2"
            ) from None
        try:
            client.wait_for_workers(1, timeout=timeout)
        except (OSError, TimeoutError):
            client.close()
            raise NapariUNetError(f"{where} has no workers after {timeout:g} s: start some (dask worker "
                                  "ADDRESS, or scale your dask-jobqueue/dask-kubernetes cluster)") from None
        try:
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def _model_plugin_class():
    """The WorkerPlugin class, built on first use so importing this module does not import distributed."""
    from distributed import WorkerPlugin

    class ModelPlugin(WorkerPlugin):
        """Loads the model once per worker, after giving TensorFlow the worker's share of the cores."""

        name = PLUGIN_NAME

        def __init__(self, model_bytes: bytes, file_name: str):
            self.model_bytes, self.file_name = model_bytes, file_name
            self.model = None
            self.tensorflow_threads = None

        def setup(self, worker) -> None:
            import tensorflow as tf

            from napari_unet.model import load_model_file

            threads = max(1, int(worker.state.nthreads))
            try:  # must come before the first TF op in this process
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
                self.tensorflow_threads = threads
            except RuntimeError:  # an in-process worker (processes=False): TF already runs, keep its pools
                self.tensorflow_threads = tf.config.threading.get_intra_op_parallelism_threads()
            folder = tempfile.mkdtemp(prefix="napari-unet-", dir=worker.local_directory)
            path = os.path.join(folder, self.file_name)
            with open(path, "wb") as handle:
                handle.write(self.model_bytes)
            self.model = load_model_file(path)

    return ModelPlugin


def _predict_on_worker(image: np.ndarray, options: dict) -> np.ndarray:
    """Run on a worker: prediction.predict with the worker's model (the one prediction engine)."""
    from distributed import get_worker

    from napari_unet.inference.prediction import predict

    model = get_worker().plugins[PLUGIN_NAME].model
    return predict(model, image, **options)


def worker_threads(client) -> dict[str, int | None]:
    """TensorFlow intra-op threads per worker address (what the plugin set), for reports and tests."""
    return client.run(lambda dask_worker: dask_worker.plugins[PLUGIN_NAME].tensorflow_threads)


def install_model(client, model_file: str | os.PathLike) -> None:
    """Send the .keras file to every worker (now and later joining ones); each loads it once.

    Loaded here first, so a bad file fails with the plain path's message before any worker sees it.
    """
    from pathlib import Path

    from napari_unet.model import load_model_file

    path = Path(model_file)
    load_model_file(path)
    try:
        model_bytes = path.read_bytes()
    except OSError as exc:
        raise NapariUNetError(f"cannot read the model file '{path}': {exc.strerror or exc}") from None
    try:
        client.register_plugin(_model_plugin_class()(model_bytes, path.name), name=PLUGIN_NAME)
    except NapariUNetError as exc:
        raise NapariUNetError(f"the workers could not load the model '{path.name}': {exc}") from None
    except ImportError as exc:
        raise NapariUNetError(f"the workers lack a package ({exc}): install napari-unet in the workers' "
                              "environment, the same version as here") from None


def predict_on_cluster(
    client,
    images: Iterable[tuple[Hashable, np.ndarray]],
    *,
    total: int,
    progress: Callable[[int, int], None] | None = None,
    **predict_options,
) -> Iterator[tuple[Hashable, np.ndarray]]:
    """Yield (key, result) as workers finish, for (key, image) pairs read lazily from `images`.

    predict_options go to prediction.predict as they are (output, threshold, test_time_augmentation …),
    so a result equals the single-process one. install_model(client, ...) must have run first.
    progress(done, total) counts finished images. A worker that dies (e.g. out of memory) raises
    NapariUNetError naming the image; so does losing the scheduler.
    """
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    n_workers = max(1, len(client.scheduler_info()["workers"]))
    pending = iter(images)
    keys = {}

    def submit_next(queue) -> bool:
        item = next(pending, None)
        if item is None:
            return False
        key, image = item
        future = client.submit(_predict_on_worker, image, predict_options, pure=False)
        keys[future.key] = key
        queue.add(future)
        return True

    queue = as_completed()
    for _ in range(IN_FLIGHT_PER_WORKER * n_workers):
        if not submit_next(queue):
            break
    done = 0
    try:
        for future in queue:
            key = keys.pop(future.key)
            try:
                result = future.result()
            except KilledWorker as exc:
                raise NapariUNetError(
                    f"a dask worker died while predicting '{key}' ({exc.last_worker.address if exc.last_worker else 'worker'}"
                    " stopped, e.g. out of memory): give workers more memory or predict fewer/smaller images at once"
                ) from None
            except (OSError, TimeoutError) as exc:
                raise NapariUNetError(f"lost the connection to the dask scheduler while predicting '{key}' "
                                      f"({type(exc).__name__}: {exc}): check the cluster and run again") from None
            del future
            done += 1
            if progress is not None:
                progress(done, total)
            yield key, result
            submit_next(queue)
    finally:
        queue.clear()

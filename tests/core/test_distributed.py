"""`napari-unet predict --scheduler`: a dask cluster gives the single-process results, and fails clearly."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from napari_unet.cli import main
from napari_unet.errors import NapariUNetError
from napari_unet.inference.distributed import (
    SchedulerChoice,
    cluster_client,
    install_model,
    parse_scheduler,
    predict_on_cluster,
    worker_threads,
)
from napari_unet.model import save_model
from tests.tiny_models import contrasty_tiny_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_model(contrasty_tiny_model(seed=2), tmp_path_factory.mktemp("models") / "tiny.keras")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(5)
    for name, shape in [("a", (50, 70)), ("b", (64, 33)), ("c", (300, 180)), ("d", (90, 90))]:
        tifffile.imwrite(folder / f"{name}.tif", (ndi.gaussian_filter(rng.random(shape), 3) * 60000).astype(np.uint16))
    return folder


def test_parse_scheduler_reads_local_workers_and_addresses():
    assert parse_scheduler("local:3") == SchedulerChoice(n_local_workers=3)
    assert parse_scheduler("tcp://10.0.0.5:8786") == SchedulerChoice(address="tcp://10.0.0.5:8786")
    with pytest.raises(NapariUNetError, match="whole number"):
        parse_scheduler("local:0")
    with pytest.raises(NapariUNetError, match="dask scheduler --scheduler-file"):
        parse_scheduler("/nowhere/scheduler.json")


def test_local_cluster_of_two_processes_equals_the_plain_path(model_path, image_dir, tmp_path, capsys):
    plain, clustered = tmp_path / "plain", tmp_path / "cluster"
    # float32: bit-for-bit arithmetic whatever the thread count (bfloat16 sums in another order with another
    # thread count, ~1e-3 apart)
    assert main(["predict", "-m", str(model_path), str(image_dir), "-o", str(plain), "--probabilities",
                 "--precision", "float32"]) == 0
    assert main(["predict", "-m", str(model_path), str(image_dir), "-o", str(clustered), "--probabilities",
                 "--scheduler", "local:2", "--precision", "float32"]) == 0
    assert "2 dask worker(s)" in capsys.readouterr().err
    names = sorted(path.name for path in plain.iterdir())
    assert names == sorted(path.name for path in clustered.iterdir()) == ["a.tif", "b.tif", "c.tif", "d.tif"]
    for name in names:
        expected, got = tifffile.imread(plain / name), tifffile.imread(clustered / name)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert got.std() > 0.05  # a real prediction, not a constant map


def test_unreachable_scheduler_fails_fast_with_one_line(model_path, image_dir, tmp_path, capsys):
    started = time.monotonic()
    code = main(["predict", "-m", str(model_path), str(image_dir), "-o", str(tmp_path / "out"),
                 "--scheduler", "tcp://127.0.0.1:9", "--scheduler-timeout", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("napari-unet predict: error: cannot reach the dask scheduler at 'tcp://127.0.0.1:9'")
    assert time.monotonic() - started < 30
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_worker_that_dies_is_reported_by_image(model_path):
    """One worker, no retries: the worker is killed while it predicts a big image."""
    import signal

    import dask

    rng = np.random.default_rng(1)
    big = (ndi.gaussian_filter(rng.random((4096, 4096)), 3) * 255).astype(np.float32)  # seconds of work
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            cluster_client(SchedulerChoice(n_local_workers=1), timeout=60) as client:
        install_model(client, model_path)
        assert list(worker_threads(client).values()) == [os.cpu_count() or 1]  # 1 worker x all cores
        (worker_pid,) = client.run(os.getpid).values()

        def images():
            yield "big", big
            deadline = time.monotonic() + 30
            while not any(client.processing().values()) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.1)
            os.kill(worker_pid, signal.SIGKILL)
            yield "small", big[:64, :64]

        with pytest.raises(NapariUNetError, match="a dask worker died while predicting '(big|small)'"):
            list(predict_on_cluster(client, images(), total=2, output="labels"))


def test_a_scheduler_file_is_used_and_its_unreachable_scheduler_named(tmp_path):
    import json

    scheduler_file = tmp_path / "scheduler.json"
    scheduler_file.write_text(json.dumps({"type": "Scheduler", "address": "tcp://127.0.0.1:9", "services": {},
                                          "started": 0, "workers": {}}))
    choice = parse_scheduler(str(scheduler_file))
    assert choice == SchedulerChoice(scheduler_file=str(scheduler_file))
    with pytest.raises(NapariUNetError, match=f"cannot reach the dask scheduler at '{scheduler_file}'"), \
            cluster_client(choice, timeout=1):
        pass

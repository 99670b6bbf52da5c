"""What an array costs to cross between napari's process and the dock's worker process, at 8192².

    .venv/bin/python benchmarks/bench_worker_channel.py [--size 8192] [--repeats 5]

Each row sends an array to the worker process and back (`echo` below, run there) through the dock's
own channel (napari_unet/worker/channel.py: shared memory), against the same round trip pickled through the pipe
(multiprocessing's Connection.send, what a channel without shared memory would cost) and one memcpy of the array
in this process. Medians of --repeats round trips, after one untimed.

Measured (2-core AMD Zen 4, load ~2, 8192², median of 5; a round trip is two crossings):

| array | shared memory round trip | pickled through the pipe | one memcpy |
|---|---|---|---|
| uint8 image / labels / slider ranks (64 MB) | 0.15 s | 0.40 s | 0.006 s |
| float32 probabilities (256 MB) | 0.69 s | 1.76 s | 0.049 s |

So one crossing of an 8192² uint8 image costs ~0.07 s (most of it the kernel providing fresh pages for the block
and for the copy out), under 1 % of predicting it (~10 s on this machine, docs/performance.md); a Predict of 8192²
sends the image and gets labels and slider ranks back: ~0.2 s in all, done by the client's sender and reader
threads, not the GUI thread.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

import numpy as np


def echo(job, value):
    """The worker's task: `value` back, through the channel both ways (arrays through shared memory). The worker
    finds it as 'bench_worker_channel:echo' on this script's folder, which it shares with the script's process."""
    return value


def _pipe_echo(connection) -> None:
    while True:
        value = connection.recv()
        if value is None:
            return
        connection.send(value)


def _median_seconds(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from napari_unet.worker.client import WorkerClient

    client = WorkerClient().start()
    client.ready.wait(120)  # its TensorFlow import, which would share the CPU with the first round trips
    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    pipe_process = context.Process(target=_pipe_echo, args=(there,), daemon=True)
    pipe_process.start()
    rng = np.random.default_rng(0)
    print(f"| array ({args.size}²) | shared memory round trip s | pickled through the pipe s | one memcpy s |")
    print("|---|---|---|---|")
    try:
        for name, dtype in (("uint8", np.uint8), ("float32", np.float32)):
            array = rng.integers(0, 255, (args.size, args.size)).astype(dtype)

            def through_worker(array=array):
                assert client.call("bench_worker_channel:echo", (array,)).shape == array.shape

            def through_pipe(array=array):
                here.send(array)
                assert here.recv().shape == array.shape

            shared = _median_seconds(through_worker, args.repeats)
            pickled = _median_seconds(through_pipe, args.repeats)
            copied = _median_seconds(array.copy, args.repeats)
            print(f"| {name} ({array.nbytes / 2**20:.0f} MB) | {shared:.3f} | {pickled:.3f} | {copied:.3f} |")
    finally:
        here.send(None)
        client.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

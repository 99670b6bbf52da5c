"""The worker process's loop: receive the dock's requests, run each as a task on a long-lived thread, reply.

In (client.py sends them): ("run", job, task, args), ("cancel", job), ("message", job, value), ("ping", n),
("exit",). Out: ("ready", versions), ("progress", job, value), ("done", job, result), ("error", job, error),
("pong", n). TensorFlow and Keras are imported as soon as the process starts, while the user looks around; a task
that comes meanwhile waits for that import in its own thread. The loop answers pings while tasks compute, so the
dock can tell a busy worker from one that stopped answering.

Tasks run on Python threads that live as long as the process: TensorFlow's pybind11 code keeps the thread state
of the first call on a thread and reuses it later, which a pool that gives each job a new thread state breaks.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import queue
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from napari_unet.worker.channel import Channel, transportable

# Live holds one thread for as long as it is on; a round, a prediction and a warm-up can run beside it.
TASK_THREADS = 4
# When the dock goes away, running tasks are cancelled; a round still scores and saves its version (the project
# on disk is the state). After this long the process ends anyway.
EXIT_WAIT_SECONDS = 120.0


class JobContext:
    """What a task gets besides its arguments: progress, the cancel check, the dock's messages, the model cache."""

    def __init__(self, job_id: int, server: "Server"):
        self.job_id = job_id
        self.models = server.models
        self._server = server
        self.cancel_event = threading.Event()
        self.inbox: queue.Queue = queue.Queue()

    def report(self, value) -> None:
        """Send a progress value to the dock (any picklable value; large arrays go through shared memory)."""
        self._server.send(("progress", self.job_id, value))

    def is_cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def messages(self) -> list:
        """The messages the dock sent to this job since the last call, oldest first."""
        received = []
        while True:
            try:
                received.append(self.inbox.get_nowait())
            except queue.Empty:
                return received


def find_task(name: str):
    """A task of tasks.TASKS by name, or 'module:function' (benchmarks and tests bring their own)."""
    if ":" in name:
        module, function = name.split(":", 1)
        return getattr(importlib.import_module(module), function)
    from napari_unet.worker.tasks import TASKS

    return TASKS[name]


class Server:
    def __init__(self, channel: Channel):
        from napari_unet.worker.tasks import ModelCache

        self.channel = channel
        self.models = ModelCache()
        self.jobs: dict[int, JobContext] = {}
        self.lock = threading.Lock()
        self.threads = ThreadPoolExecutor(max_workers=TASK_THREADS, thread_name_prefix="napari-unet task")

    def send(self, message) -> None:
        """Send, or drop quietly when the dock is gone (the process is about to end)."""
        with contextlib.suppress(OSError, EOFError, ValueError):
            self.channel.send(message)

    def serve(self) -> None:
        threading.Thread(target=self._import_tensorflow, name="napari-unet import", daemon=True).start()
        while True:
            try:
                message = self.channel.receive()
            except (EOFError, OSError):
                break  # the dock (or napari) is gone
            kind = message[0]
            if kind == "run":
                self._start(*message[1:])
            elif kind in ("cancel", "message"):
                with self.lock:
                    job = self.jobs.get(message[1])
                if job is not None and kind == "cancel":
                    job.cancel_event.set()
                elif job is not None:
                    job.inbox.put(message[2])
            elif kind == "ping":
                self.send(("pong", message[1]))
            elif kind == "exit":
                break
        self._finish()

    def _import_tensorflow(self) -> None:
        try:
            import keras
            import tensorflow
        except Exception as error:  # the first task that needs them reports it, worded
            self.send(("ready", {"error": str(error)}))
            return
        self.send(("ready", {"tensorflow": tensorflow.__version__, "keras": keras.__version__}))

    def _start(self, job_id: int, task_name: str, args: tuple) -> None:
        job = JobContext(job_id, self)
        with self.lock:
            self.jobs[job_id] = job
        self.threads.submit(self._run, job, task_name, args)

    def _run(self, job: JobContext, task_name: str, args: tuple) -> None:
        try:
            result = find_task(task_name)(job, *args)
        except BaseException as error:  # every failure reaches the dock, worded there
            reply = ("error", job.job_id, transportable(error))
        else:
            reply = ("done", job.job_id, result)
        finally:
            with self.lock:
                self.jobs.pop(job.job_id, None)
        try:
            self.channel.send(reply)
        except (OSError, EOFError, ValueError):
            pass
        except Exception as error:  # a result that does not pickle: say so rather than leave the dock waiting
            self.send(("error", job.job_id, transportable(error)))

    def _finish(self) -> None:
        """Cancel what runs, let it end (a round saves its version), then leave without TensorFlow's destructors."""
        with self.lock:
            for job in self.jobs.values():
                job.cancel_event.set()
        deadline = threading.Timer(EXIT_WAIT_SECONDS, _leave)
        deadline.daemon = True
        deadline.start()
        self.threads.shutdown(wait=True)
        self.channel.close()
        _leave()


def _leave() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def serve(connection) -> None:
    """Serve the dock on `connection` (a multiprocessing Connection) until it closes or says exit."""
    Server(Channel(connection)).serve()


def main() -> None:
    """`python -m napari_unet.worker.server`, started by client.py: where to connect comes on standard input."""
    import pickle
    from multiprocessing.connection import Client

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter stays off napari's console
    settings = pickle.load(sys.stdin.buffer)
    sys.path[:] = settings["sys_path"]  # as the dock's process found its modules (a test's or benchmark's tasks too)
    serve(Client(settings["address"], authkey=settings["authkey"]))


if __name__ == "__main__":
    main()

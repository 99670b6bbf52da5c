"""Messages between the dock and its worker process: pickled, with large arrays through shared memory.

A message is any picklable object. A numpy array of SHARED_MIN_BYTES or more is not pickled: it is copied once
into a new shared-memory block, and the receiver copies it out and removes the block, so an 8192² image costs
two copies of its bytes, not a trip through a pipe (benchmarks/bench_worker_channel.py). The sender keeps its
own handle on each block until the receiver says it has read it (a release notice): on Windows a block lives only
while some process holds it open. Each process's resource tracker removes the blocks it made that were never read
(the other process died) when the process ends.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import threading
import traceback
from multiprocessing import resource_tracker, shared_memory

import numpy as np

SHARED_MIN_BYTES = 1 << 20  # smaller arrays travel inside the pickle: a block costs more than copying them
_RELEASE = "__release__"  # a notice: the blocks named in it were read and may be closed by their sender
_SHARED = "shm"


class RemoteError(Exception):
    """An unexpected error in the worker process, carried as its type's name, its message and its traceback: the
    exception itself may belong to a library napari's process must never import (TensorFlow)."""

    def __init__(self, type_name: str, message: str, traceback_text: str = ""):
        super().__init__(type_name, message, traceback_text)
        self.type_name, self.message, self.traceback_text = type_name, message, traceback_text

    def __str__(self) -> str:
        return self.message


def transportable(error: BaseException) -> BaseException:
    """`error` itself when napari's process can unpickle it without importing anything new (napari-unet's own
    errors, Cancelled, MemoryError), else a RemoteError that says what it was."""
    if type(error).__module__ in ("napari_unet.errors", "builtins"):
        from napari_unet.errors import Cancelled, NapariUNetError

        if isinstance(error, (NapariUNetError, Cancelled, MemoryError)):
            try:
                pickle.loads(pickle.dumps(error))
                return error
            except Exception:  # a constructor pickle cannot call again: send its words instead
                pass
    return RemoteError(type(error).__name__, str(error), "".join(traceback.format_exception(error)))


class _Pickler(pickle.Pickler):
    def __init__(self, file, blocks: list):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.blocks = blocks

    def persistent_id(self, obj):
        if type(obj) not in (np.ndarray, np.memmap) or obj.nbytes < SHARED_MIN_BYTES or obj.dtype.hasobject:
            return None
        block = shared_memory.SharedMemory(create=True, size=obj.nbytes)
        self.blocks.append(block)
        np.copyto(np.ndarray(obj.shape, obj.dtype, buffer=block.buf), obj)
        return (_SHARED, block.name, obj.shape, obj.dtype.str)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, names: list):
        super().__init__(file)
        self.names = names

    def persistent_load(self, pid):
        kind, name, shape, dtype = pid
        if kind != _SHARED:
            raise pickle.UnpicklingError(f"unknown out-of-band object {kind!r}")
        block = shared_memory.SharedMemory(name=name)
        try:
            array = np.ndarray(shape, np.dtype(dtype), buffer=block.buf).copy()
        finally:
            block.close()
            block.unlink()
        self.names.append(name)
        return array


def dumps(message, blocks: list) -> bytes:
    """`message` pickled; the shared-memory blocks made for its arrays are appended to `blocks` (still open)."""
    buffer = io.BytesIO()
    _Pickler(buffer, blocks).dump(message)
    return buffer.getvalue()


def loads(payload: bytes, names: list):
    """The message in `payload`; the names of the blocks it read (and removed) are appended to `names`."""
    return _Unpickler(io.BytesIO(payload), names).load()


class Channel:
    """One end of the connection: send() from any thread, receive() from one reader thread."""

    def __init__(self, connection):
        self.connection = connection
        self._send_lock = threading.Lock()
        self._blocks_lock = threading.Lock()
        self._unread: dict[str, shared_memory.SharedMemory] = {}  # blocks sent, not yet released by the receiver

    def send(self, message) -> None:
        """Send `message`; raises OSError (or EOFError) when the other end is gone."""
        blocks: list[shared_memory.SharedMemory] = []
        try:
            payload = dumps(message, blocks)
            with self._blocks_lock:
                self._unread.update((block.name, block) for block in blocks)
            with self._send_lock:
                self.connection.send_bytes(payload)
        except BaseException:
            with self._blocks_lock:
                for block in blocks:
                    self._unread.pop(block.name, None)
            for block in blocks:
                block.close()
                block.unlink()
            raise

    def receive(self):
        """The next message; blocks until one comes. EOFError or OSError: the other end is gone."""
        while True:
            names: list[str] = []
            message = loads(self.connection.recv_bytes(), names)
            if names:
                self.send((_RELEASE, names))
            if type(message) is tuple and len(message) == 2 and message[0] == _RELEASE:
                self._drop(message[1], unlink=False)
                continue
            return message

    def close(self) -> None:
        """The other end is gone: remove the blocks it will never read, and close the connection."""
        with self._blocks_lock:
            names = list(self._unread)
        self._drop(names, unlink=True)
        with contextlib.suppress(OSError):
            self.connection.close()

    def _drop(self, names, unlink: bool) -> None:
        for name in names:
            with self._blocks_lock:
                block = self._unread.pop(name, None)
            if block is None:
                continue
            block.close()
            if unlink:
                with contextlib.suppress(FileNotFoundError):  # the receiver had read it after all
                    block.unlink()
            elif os.name == "posix":
                # The receiver removed it: this process's resource tracker must forget it too, or it would report
                # it leaked (and try to remove it again) when napari or the worker ends.
                resource_tracker.unregister("/" + block.name, "shared_memory")

"""Fine-tuned model versions on disk: atomic saves, JSON records, rename/delete/revert/export.

Layout: one folder (`$NAPARI_UNET_HOME/models`, else the platform's user data dir + `/models`)
holding `<name>.keras` (the model, with its metadata inside) and `<name>.json` (the record,
records.VersionRecord: parent version, lineage, training data hashes and shapes, settings, time,
validation metrics, date), and optionally `<name>.onnx`, its ONNX twin for a quick first prediction
(onnx_engine.py), which follows renames and deletions. A record that cannot be read is not a version.

Crash safety: the .keras is written first (temp file + rename, model.save_model), then the record
(temp file + fsync + rename). A version is visible only when both files exist, so a process killed
mid-save leaves no half-written version; leftover temp files (dot-files) are ignored and removed by
the next save. Concurrent saves (two fine-tunes finishing at once, from threads or processes) take
an exclusive lock on `<root>/.lock`, so version numbers never collide.

Revert: `revert(name)` never deletes anything; it saves a copy of `name` as a NEW version whose
parent is `name` (record "reverted_from"). The newest version of a lineage is its current one, so
after a revert the lineage continues from the reverted weights and the history stays linear.

Shipped models (napari_unet/models/*.keras) are read-only: they can be loaded and exported through
the store, but not renamed, deleted or overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from napari_unet.errors import NapariUNetError
from napari_unet.storage.files import atomic_write_json, temporary_sibling, user_data_dir
from napari_unet.storage.records import VERSION_FORMAT, PairFingerprint, VersionRecord
from napari_unet.storage.shipped import shipped_model_names, shipped_model_path

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
VERSION_SUFFIX = re.compile(r"^(?P<lineage>.+)-v(?P<number>\d+)$")
LOCK_TIMEOUT_SECONDS = 120.0


def default_root() -> Path:
    """`$NAPARI_UNET_HOME/models`, else e.g. ~/.local/share/napari-unet/models."""
    return user_data_dir() / "models"


def array_sha1(array) -> str:
    """Content hash of an array's bytes (C order) — identifies training data without storing it."""
    data = np.ascontiguousarray(np.asarray(array))
    digest = hashlib.sha1(data.tobytes())
    digest.update(f"{data.dtype.str}{data.shape}".encode())
    return digest.hexdigest()


def pair_fingerprint(image, mask, name: str | None = None) -> PairFingerprint:
    """What a record keeps about one training pair: hashes, shape, and optionally its name."""
    return PairFingerprint(image_sha1=array_sha1(image), mask_sha1=array_sha1(mask),
                           shape=tuple(int(n) for n in np.shape(image)), name=str(name or ""))


def _json_safe(value):
    """Settings/metrics as plain JSON (numpy scalars, tuples, records, dataclasses, paths)."""
    if isinstance(value, PairFingerprint):
        return value.to_json()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return _json_safe(asdict(value))
    return str(value)


def _unwritable(root: Path, exc: OSError) -> NapariUNetError:
    reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return NapariUNetError(
        f"cannot write to model folder '{root}': {reason} — free some space, or set NAPARI_UNET_HOME to a writable folder"
    )


class ModelStore:
    """Versions of fine-tuned models in one folder; see the module docstring for the guarantees."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else default_root()

    # ---------------------------------------------------------------- reading
    def _paths(self, name: str) -> tuple[Path, Path]:
        return self.root / f"{name}.keras", self.root / f"{name}.json"

    def _read_record(self, record_path: Path) -> VersionRecord | None:
        try:
            values = json.loads(record_path.read_text())
        except (OSError, ValueError):
            return None  # unreadable or foreign JSON: not a version
        if not isinstance(values, dict) or values.get("format") != VERSION_FORMAT:
            return None
        model_path = self.root / f"{record_path.stem}.keras"
        if not model_path.is_file():
            return None
        try:  # the file's name is the version's name, whatever the record says
            record = VersionRecord.from_json({**values, "name": record_path.stem})
        except (TypeError, ValueError, KeyError, AttributeError):
            return None  # a damaged record: not a version (its files stay)
        return replace(record, path=str(model_path))

    def list_versions(self) -> list[VersionRecord]:
        """Records of all complete versions, newest first."""
        if not self.root.is_dir():
            return []
        records = [self._read_record(p) for p in self.root.glob("*.json") if not p.name.startswith(".")]
        records = [r for r in records if r is not None]
        return sorted(records, key=lambda r: (r.created, r.sequence), reverse=True)

    def names(self) -> list[str]:
        return [record.name for record in self.list_versions()]

    def has(self, name: str) -> bool:
        return self.record(name) is not None

    def record(self, name: str) -> VersionRecord | None:
        """The record of version `name`, None if the store has no such (complete) version."""
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            return None
        return self._read_record(self._paths(name)[1])

    def _require(self, name: str) -> VersionRecord:
        record = self.record(name)
        if record is None:
            known = ", ".join(self.names()) or "(none yet)"
            raise NapariUNetError(f"no stored model version named '{name}' in '{self.root}': known versions: {known}")
        return record

    def load(self, name: str):
        """The SegmentationModel of a stored version (source = its name)."""
        from napari_unet.model import load_model_file

        record = self._require(name)
        model = load_model_file(record.path)
        model.source = name
        return model

    # ---------------------------------------------------------------- writing
    @contextlib.contextmanager
    def _locked(self):
        """Exclusive OS lock on `<root>/.lock` across threads and processes (filelock: flock, or msvcrt on Windows).

        Each call opens the file anew, so threads of one process exclude each other too. The OS releases the
        lock when its process dies, so a save that was killed never blocks the next one.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _unwritable(self.root, exc) from exc
        lock = FileLock(self.root / ".lock", timeout=LOCK_TIMEOUT_SECONDS)
        try:
            lock.acquire()
        except Timeout:  # a TimeoutError, hence an OSError: caught first
            raise NapariUNetError(
                f"the model folder '{self.root}' is locked by another save (lock file '{lock.lock_file}'): wait for "
                "it to finish, or stop the other napari-unet that is saving there"
            ) from None
        except OSError as exc:
            raise _unwritable(self.root, exc) from exc
        try:
            yield
        finally:
            lock.release()

    def _clean_temp_files(self) -> None:
        """Remove what interrupted saves left; only called under the lock, when nobody else writes.

        That is temp files (dot-files) and model files without a record (killed between the two writes).
        """
        for path in self.root.glob(".*"):
            if path.name != ".lock" and path.is_file() and (path.suffix in (".keras", ".onnx", ".tmp")):
                path.unlink(missing_ok=True)
        for path in [*self.root.glob("*.keras"), *self.root.glob("*.onnx")]:
            if not path.with_suffix(".json").exists():
                path.unlink(missing_ok=True)

    def _write_record(self, record: VersionRecord) -> None:
        atomic_write_json(self._paths(record.name)[1], record.to_json())

    def _check_new_name(self, name: str) -> None:
        if not NAME_PATTERN.match(name or ""):
            raise NapariUNetError(
                f"'{name}' is not a valid model name: use letters, digits, '.', '_' or '-' (up to 100, no spaces or '/')"
            )
        if name in shipped_model_names():
            raise NapariUNetError(f"'{name}' is a shipped model (read-only): choose another name, e.g. '{name}-mine'")
        if any(path.exists() for path in self._paths(name)):
            raise NapariUNetError(f"a model version named '{name}' already exists in '{self.root}': choose another name")

    def _check_not_shipped(self, name: str, action: str) -> None:
        if name in shipped_model_names() and not self.has(name):
            raise NapariUNetError(f"'{name}' is a shipped model and cannot be {action}: shipped models are read-only")

    def _next_name(self, lineage: str) -> str:
        numbers = [0]
        for path in self.root.iterdir():
            match = VERSION_SUFFIX.match(path.stem) if not path.name.startswith(".") else None
            if match and match["lineage"] == lineage:
                numbers.append(int(match["number"]))
        return f"{lineage}-v{max(numbers) + 1}"

    def _lineage_of(self, parent: str | None, model) -> str:
        if parent:
            record = self.record(parent)
            if record is not None:
                return record.lineage or parent
            match = VERSION_SUFFIX.match(parent)
            return match["lineage"] if match else Path(parent).stem
        return model.metadata.name or "model"

    def save_version(self, model, history=None, parent: str | None = None, training_pairs=None,
                     settings: dict | None = None, name: str | None = None, extra: dict | None = None,
                     metrics: dict | None = None) -> VersionRecord:
        """Save `model` as a new version and return its record.

        name: default `<lineage>-v<N>`, N = 1 + the highest number of that lineage in the store; the
        lineage is the parent's (or the model's name). A name given here starts its own lineage.
        parent: the version/shipped model it was fine-tuned from (default: what finetune() recorded).
        training_pairs: (image, mask) arrays or PairFingerprints (pair_fingerprint) — stored as hashes and shapes.
        history: a TrainHistory (metrics, settings and seconds are taken from it).
        metrics: extra scores to record (e.g. {"held_out_iou": 0.71}); they win over the history's.
        extra: more of the record's keys (VersionRecord's fields, e.g. a project's round, or any other).
        """
        from napari_unet.model import SegmentationModel, save_model

        info = model.metadata.info.get("training", {}) if isinstance(model.metadata.info, dict) else {}
        # A model straight from load_model keeps its source; finetune() clears it and records its parent.
        parent = parent or model.source or info.get("parent") or None
        if parent:
            parent = str(parent)
            parent = Path(parent).stem if parent.endswith(".keras") else parent
        pairs = [item if isinstance(item, PairFingerprint) else pair_fingerprint(*item) for item in training_pairs or []]
        given_metrics, metrics = metrics or {}, {}
        if history is not None:
            metrics = {"val_iou": history.val_iou, "val_dice": history.val_dice, "final_loss": history.final_loss,
                       "steps": history.steps, "best_epoch": history.best_epoch,
                       "stopped_reason": history.stopped_reason}
            settings = {**(history.settings or {}), **(settings or {})}
        with self._locked():
            self._clean_temp_files()
            if name is None:
                lineage = self._lineage_of(parent, model)
                name = self._next_name(lineage)
            else:  # a user-named version starts its own lineage ('my-cells' -> 'my-cells-v1' next)
                match = VERSION_SUFFIX.match(name)
                lineage = match["lineage"] if match else name
            self._check_new_name(name)
            model_path, record_path = self._paths(name)
            record = VersionRecord.from_json({
                "name": name,
                "lineage": lineage,
                "parent": parent,
                "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                "sequence": time.time_ns(),
                "metrics": _json_safe({**metrics, **given_metrics}),
                "settings": _json_safe(settings or {}),
                "seconds": None if history is None else round(float(history.seconds), 3),
                "training_pairs": _json_safe(pairs),
                "model": {"config": _json_safe(model.metadata.config), "class_names": list(model.metadata.class_names),
                          "tile_size": model.metadata.tile_size},
                **_json_safe(extra or {}),
            })
            # A view with the lineage as its name: the caller's model (maybe in use by another thread) is not changed.
            named = SegmentationModel(model.keras_model, replace(model.metadata, name=lineage), model.source,
                                       model.side_views)
            try:
                save_model(named, model_path)
                self._write_record(record)
            except OSError as exc:
                # Nothing half-written stays: the record is what makes a version visible.
                for path in (record_path, model_path):  # neither existed before this save
                    with contextlib.suppress(OSError):
                        path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self._clean_temp_files()
                raise _unwritable(self.root, exc) from exc
        return replace(record, path=str(model_path))

    def rename(self, old: str, new: str) -> VersionRecord:
        """Rename a stored version (children's parent links follow); shipped models cannot be renamed."""
        self._check_not_shipped(old, "renamed")
        with self._locked():
            record = self._require(old)
            self._check_new_name(new)
            old_model, old_record = self._paths(old)
            new_model = self._paths(new)[0]
            record = replace(record, name=new, path=str(new_model))
            try:
                os.replace(old_model, new_model)
                if old_model.with_suffix(".onnx").is_file():  # its ONNX twin (onnx_engine.py) follows
                    os.replace(old_model.with_suffix(".onnx"), new_model.with_suffix(".onnx"))
                self._write_record(record)
                old_record.unlink(missing_ok=True)
                for child in self.list_versions():
                    if child.parent == old:
                        self._write_record(replace(child, parent=new))
            except OSError as exc:
                raise _unwritable(self.root, exc) from exc
        return record

    def delete(self, name: str) -> None:
        """Delete a stored version (record first, so a crash never leaves a visible broken version)."""
        self._check_not_shipped(name, "deleted")
        with self._locked():
            self._require(name)
            model_path, record_path = self._paths(name)
            try:
                record_path.unlink()
                model_path.unlink(missing_ok=True)
                model_path.with_suffix(".onnx").unlink(missing_ok=True)
            except OSError as exc:
                raise _unwritable(self.root, exc) from exc

    def revert(self, name: str) -> VersionRecord:
        """Make `name` the current version of its lineage by saving a copy as a new (newest) version.

        Nothing is deleted; the new record has parent = name and "reverted_from" = name.
        """
        record = self._require(name)
        model = self.load(name)
        return self.save_version(
            model, parent=name, settings=record.settings, training_pairs=record.training_pairs,
            metrics=record.metrics, extra={"reverted_from": name},
        )

    def export(self, name: str, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Copy a stored (or shipped) model to a .keras file elsewhere, atomically."""
        record = self.record(name)
        if record is not None:
            source = Path(record.path)
        elif name in shipped_model_names():
            source = shipped_model_path(name)
        else:
            self._require(name)
        target = Path(path)
        if target.suffix != ".keras":
            raise NapariUNetError(f"export to a .keras file, not '{target.name}': e.g. '{target.stem}.keras'")
        if target.exists() and not overwrite:
            raise NapariUNetError(f"'{target}' already exists: choose another file or pass overwrite=True")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_name = temporary_sibling(target, ".keras")
        try:
            shutil.copyfile(source, tmp_name)
            os.replace(tmp_name, target)
        except OSError as exc:
            Path(tmp_name).unlink(missing_ok=True)
            raise NapariUNetError(f"cannot export '{name}' to '{target}': {exc.strerror or exc}") from exc
        return target

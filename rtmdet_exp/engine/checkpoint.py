"""Crash-safe checkpoints: atomic replace, a checksum, fallback to the newest valid file, RNG state.

File layout (one file per checkpoint)::

    MAGIC (8 bytes) | sha256 of payload (32 bytes) | payload length (8 bytes, little-endian) | payload

where the payload is the ``torch.save`` serialisation of the state dict. A file cut short by a
crash, a full disk or a copy gone wrong fails the length or checksum test and is reported as
corrupt instead of being half-loaded. Writing goes to a temporary file in the target folder,
which is fsynced and then renamed over the target with ``os.replace``, so the target is always
either the old complete file or the new complete one.

Loading uses ``torch.load(weights_only=True)`` by default: states should hold tensors, plain
containers, numbers and strings (what :func:`capture_rng_state` returns qualifies). Pass
``weights_only=False`` for trusted files holding other objects.

Training need not wait for the disk: :func:`snapshot` copies a state to host memory (one device-to-host
copy per storage, shared storages copied once, so the file is the same as a direct save of the
state), and :class:`BackgroundWriter` serialises and writes it on a worker thread through the same
atomic :func:`save_checkpoint`. A kill during a background write leaves the previous file intact.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import random
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

MAGIC = b"RTMCKPT1"
_DIGEST_BYTES = 32
_LENGTH_BYTES = 8
HEADER_BYTES = len(MAGIC) + _DIGEST_BYTES + _LENGTH_BYTES
_WRITE_CHUNK = 1 << 24


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or a file is missing, truncated or corrupt."""


def _describe(exc: OSError) -> str:
    """``'No space left on device (ENOSPC)'``-style text for an OSError."""
    name = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno is not None else "no errno"
    return f"{exc.strerror or exc} ({name})"


def _write_all(fd: int, data: memoryview) -> None:
    """``os.write`` until every byte is out (a single call may write only part)."""
    offset = 0
    while offset < len(data):
        offset += os.write(fd, data[offset : offset + _WRITE_CHUNK])


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself; best effort (not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically, with a checksum; returns the path.

    On any OSError (disk full, permissions, ...) the temporary file is removed, an existing
    checkpoint at ``path`` is left untouched and :class:`CheckpointError` is raised.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    header = MAGIC + hashlib.sha256(payload).digest() + len(payload).to_bytes(_LENGTH_BYTES, "little")
    tmp: str | None = None
    fd: int | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o644)  # mkstemp makes 0600; checkpoints are meant to be shared
        _write_all(fd, memoryview(header))
        _write_all(fd, payload)
        os.fsync(fd)
        os.close(fd)
        fd = None
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise CheckpointError(
            f"could not write checkpoint {path}: {_describe(exc)}; any previous checkpoint there is unchanged"
        ) from exc
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        del payload
    _fsync_dir(path.parent)
    return path


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device | None = "cpu", weights_only: bool = True
) -> dict[str, Any]:
    """Read, verify and deserialise a file written by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` naming the file when it is missing, unreadable, truncated,
    fails the checksum or does not deserialise to a dict.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {path} does not exist") from exc
    except OSError as exc:
        raise CheckpointError(f"could not read checkpoint {path}: {_describe(exc)}") from exc
    if len(data) < HEADER_BYTES:
        raise CheckpointError(f"checkpoint {path} is truncated: {len(data)} bytes, the header alone is {HEADER_BYTES}")
    if data[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"checkpoint {path} is not an rtmdet_exp checkpoint (bad magic bytes)")
    digest = data[len(MAGIC) : len(MAGIC) + _DIGEST_BYTES]
    expected_len = int.from_bytes(data[len(MAGIC) + _DIGEST_BYTES : HEADER_BYTES], "little")
    payload = memoryview(data)[HEADER_BYTES:]
    if len(payload) != expected_len:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt: payload is {len(payload)} bytes, header says {expected_len}"
        )
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: sha256 checksum mismatch")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=weights_only)
    except Exception as exc:
        hint = "; pass weights_only=False if the file is trusted" if weights_only else ""
        raise CheckpointError(f"checkpoint {path} passed its checksum but failed to deserialise: {exc}{hint}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def latest_valid_checkpoint(
    candidates: Sequence[str | os.PathLike],
    map_location: str | torch.device | None = "cpu",
    weights_only: bool = True,
) -> tuple[Path, dict[str, Any]] | None:
    """First candidate (in the given order, newest first) that loads and verifies, with its state.

    Missing files are skipped quietly; each invalid one is logged as a warning with the reason,
    and when the file used is not the first existing candidate a warning names it and the
    files skipped. ``None`` when no candidate is usable.
    """
    bad: list[Path] = []
    for candidate in map(Path, candidates):
        if not candidate.exists():
            logger.debug("checkpoint candidate %s does not exist, skipping", candidate)
            continue
        try:
            state = load_checkpoint(candidate, map_location=map_location, weights_only=weights_only)
        except CheckpointError as exc:
            logger.warning("skipping invalid checkpoint %s: %s", candidate, exc)
            bad.append(candidate)
            continue
        if bad:
            logger.warning(
                "falling back to checkpoint %s (skipped invalid: %s)", candidate, ", ".join(str(b) for b in bad)
            )
        else:
            logger.info("using checkpoint %s", candidate)
        return candidate, state
    if bad:
        logger.warning("no valid checkpoint; invalid files: %s", ", ".join(str(b) for b in bad))
    return None


def capture_rng_state() -> dict[str, Any]:
    """State of python ``random``, numpy's global generator, torch CPU and every CUDA device.

    Only plain containers, numbers and tensors, so it loads with ``weights_only=True``.
    """
    np_state = np.random.get_state(legacy=False)
    np_state = {**np_state, "state": {**np_state["state"], "key": np_state["state"]["key"].tolist()}}
    return {
        "python": random.getstate(),
        "numpy": np_state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; keys that are absent are left alone.

    CUDA states are restored when CUDA is available; if the device count differs from the
    captured one, the common devices are restored and a warning is logged.
    """
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        np_state = state["numpy"]
        key = np.asarray(np_state["state"]["key"], dtype=np.uint32)
        np.random.set_state({**np_state, "state": {**np_state["state"], "key": key}})
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if count != len(cuda_states):
            logger.warning(
                "RNG state has %d CUDA devices, this machine %d: restoring the common ones", len(cuda_states), count
            )
        for device, cuda_state in enumerate(cuda_states[:count]):
            torch.cuda.set_rng_state(torch.as_tensor(cuda_state, dtype=torch.uint8).cpu(), device)


def snapshot(state: Any) -> Any:
    """A copy of ``state`` whose tensors are in host memory and no longer change with training.

    Containers (dict, list, tuple) are rebuilt, each object once (an object referenced twice, such
    as the betas tuple shared by optimiser groups, is one object in the copy too), and tensors are
    copied storage by storage: tensors sharing a storage (tied weights, views) still share one in the
    copy, with the same offsets, sizes and strides. So ``torch.save`` of the copy writes the same bytes
    as of the original. Device tensors go through pinned memory with one synchronisation at the end.
    Other leaves (numbers, strings) are kept as they are.
    """
    storages: dict[tuple[str, int], torch.UntypedStorage] = {}
    out = _snapshot(state, storages, {})
    if any(device.startswith("cuda") for device, _ in storages):
        torch.cuda.synchronize()
    return out


def _snapshot(obj: Any, storages: dict[tuple[str, int], torch.UntypedStorage], done: dict[int, Any]) -> Any:
    if id(obj) in done:
        return done[id(obj)][1]
    if isinstance(obj, torch.Tensor):
        copy: Any = _host_tensor(obj.detach(), storages)
    elif isinstance(obj, dict):
        copy = type(obj)((k, _snapshot(v, storages, done)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a module state dict's version record, saved with it
            copy._metadata = obj._metadata
    elif isinstance(obj, list):
        copy = [_snapshot(v, storages, done) for v in obj]
    elif isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        copy = tuple(_snapshot(v, storages, done) for v in obj)
    else:
        return obj
    done[id(obj)] = (obj, copy)  # the original is kept alive so that its id stays unique meanwhile
    return copy


def _host_tensor(tensor: torch.Tensor, copies: dict[tuple[str, int], torch.UntypedStorage]) -> torch.Tensor:
    """``tensor`` re-viewed on a host copy of its whole storage (copied once per storage)."""
    storage = tensor.untyped_storage()
    key = (str(tensor.device), storage.data_ptr())
    if key not in copies:
        source = torch.empty(0, dtype=torch.uint8, device=tensor.device).set_(storage)  # the storage's bytes
        pinned = tensor.device.type == "cuda"
        host = torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=pinned)
        host.copy_(source, non_blocking=pinned)
        copies[key] = host.untyped_storage()
    view = torch.empty(0, dtype=tensor.dtype)
    return view.set_(copies[key], tensor.storage_offset(), tensor.size(), tensor.stride())


class BackgroundWriter:
    """Runs checkpoint writes on one worker thread, one at a time, in the order submitted.

    :meth:`submit` first waits for the previous write (so at most one state is held in memory
    besides the model's) and re-raises its error, if any; :meth:`raise_if_failed` lets the caller
    notice a failed write early, and :meth:`wait` waits for the last one and returns its result.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._pending: Future | None = None

    def submit(self, write: Callable[[], Path]) -> Future:
        """Queue ``write`` (e.g. a :func:`save_checkpoint` call on a :func:`snapshot`)."""
        self.wait()
        self._pending = self._executor.submit(write)
        return self._pending

    def raise_if_failed(self) -> None:
        """Re-raise the error of a finished write (without waiting for one still running)."""
        if self._pending is not None and self._pending.done():
            self.wait()

    def wait(self) -> Path | None:
        """Wait for the last write; returns its result, or raises its error (once)."""
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else None

    def close(self) -> None:
        """Finish the queued write and stop the thread (errors are the caller's to collect first)."""
        self._executor.shutdown(wait=True)

"""Writing files so that a reader never sees half of one: temp file beside the target, then rename.

Writers hand over the bytes to write (serialised in memory first: soft prompts, reports and checkpoints
are small), so a full disk or a refused permission surfaces as Python's own OSError, which becomes one
WriteError naming the file, rather than a serializer's own exception (safetensors' SafetensorError,
torch's "unexpected pos" RuntimeError). Inside ``together()``, files written by several calls are renamed
into place as one group: a soft prompt and its report land both or neither, and a group that fails halfway
puts the old files of its names back (a failed write never costs the old file).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from ..errors import WriteError

Job = tuple[Path, Callable[[Path], None]]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp gives 0600

# (target, finished temp file) pairs waiting for the end of a together() block
_pending: ContextVar[list[tuple[Path, Path]] | None] = ContextVar("_pending", default=None)


def atomic_write(jobs: list[Job]) -> list[Path]:
    """Write each file to a temp file beside its target, then rename them all into place.

    All temp files are complete before the first rename, so a failure leaves neither a partial file
    nor one file of a pair (an image and its record, an SDXL pair) without the other; temp files are
    removed on any failure. A full disk or a refused permission raises WriteError naming the file.
    """
    temps: list[tuple[Path, Path]] = []
    try:
        for target, write in jobs:
            temps.append((target, _write_temp(target, write)))
    except BaseException:
        _discard(temps)
        raise
    pending = _pending.get()
    if pending is not None:
        pending += temps  # renamed when the together() block ends
    else:
        _rename_all(temps)
    return [target for target, _ in jobs]


@contextlib.contextmanager
def together() -> Iterator[None]:
    """Every atomic_write inside the block lands as one group when it ends: all files, or none of them."""
    outer = _pending.get()
    temps: list[tuple[Path, Path]] = []
    token = _pending.set(temps)
    try:
        yield
    except BaseException:
        _pending.reset(token)
        _discard(temps)
        raise
    _pending.reset(token)
    if outer is not None:
        outer += temps
    else:
        _rename_all(temps)


def bytes_writer(data: bytes) -> Callable[[Path], None]:
    """A job's write function for bytes already serialised in memory."""
    return lambda tmp: tmp.write_bytes(data)


def torch_bytes(obj: Any) -> bytes:
    """``torch.save`` into memory (torch's own file writer reports a full disk as a cryptic RuntimeError)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write_json(path: Path, data: Any) -> Path:
    """A JSON file, written atomically."""
    return atomic_write([(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2), "utf-8"))])[0]


def _write_temp(target: Path, write: Callable[[Path], None]) -> Path:
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(handle)
        tmp = Path(name)
        write(tmp)
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; give the file the usual permissions
        return tmp
    except OSError as error:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise _write_error(target, error) from None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def _rename_all(temps: list[tuple[Path, Path]]) -> None:
    """Rename a group into place: all of it, or none of it with every old file as it was."""
    folder = next((target for target, _ in temps if target.is_dir()), None)
    if folder is not None:  # refused before any rename: the other files of the group keep their old versions
        _discard(temps)
        raise WriteError(
            f"{folder}: a folder is in the way of this file; nothing was written: move it or write elsewhere"
        )
    # A group of several: keep a hard link to each old file until all new ones landed, to put it back otherwise.
    try:
        kept = _keep_old([target for target, _ in temps]) if len(temps) > 1 else {}
    except BaseException:
        _discard(temps)
        raise
    done: list[Path] = []
    try:
        for target, tmp in temps:
            os.replace(tmp, target)
            done.append(target)
    except BaseException as error:
        # Both or neither: the files of the group that already landed make way for the old ones again.
        for target in reversed(done):
            if target in kept:
                os.replace(kept.pop(target), target)
            else:
                target.unlink(missing_ok=True)
        _discard(temps)
        _drop(kept)
        if isinstance(error, OSError):
            raise _write_error(temps[len(done)][0], error) from None
        raise
    _drop(kept)


def _keep_old(targets: list[Path]) -> dict[Path, Path]:
    """A second name (hard link, else a copy) beside each existing target; nothing is kept for new files."""
    kept: dict[Path, Path] = {}
    for target in targets:
        if not target.is_file():
            continue
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.old")
        try:
            try:
                os.link(target, old)
            except OSError:  # a file system without hard links: a copy does the same job
                shutil.copy2(target, old)
        except OSError as error:
            old.unlink(missing_ok=True)
            _drop(kept)
            raise _write_error(target, error) from None
        kept[target] = old
    return kept


def _drop(kept: dict[Path, Path]) -> None:
    for old in kept.values():
        old.unlink(missing_ok=True)


def _discard(temps: list[tuple[Path, Path]]) -> None:
    for _, tmp in temps:
        tmp.unlink(missing_ok=True)


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _write_error(target: Path, error: OSError) -> WriteError:
    reason = error.strerror or type(error).__name__
    fix = "free some space or write elsewhere" if error.errno in _NO_SPACE else "choose a folder you can write to"
    return WriteError(f"{target}: cannot write it ({reason}); nothing was written: {fix}")

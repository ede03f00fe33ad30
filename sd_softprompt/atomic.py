"""Writing files so that a reader never sees half of one: temp file beside the target, then rename."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp gives 0600


def atomic_write(jobs: list[tuple[Path, Callable[[Path], None]]]) -> list[Path]:
    """Write each file to a temp file beside its target, then rename them all into place.

    All temp files are complete before the first rename, so a failure leaves neither a partial file
    nor one file of a pair (an image and its record, an SDXL pair) without the other; temp files are removed on any failure.
    """
    temps: list[Path] = []
    try:
        for target, write in jobs:
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(handle)
            temps.append(Path(name))
            write(temps[-1])
            os.chmod(temps[-1], _FILE_MODE)  # mkstemp makes 0600; give the file the usual permissions
        for (target, _), tmp in zip(jobs, temps):
            os.replace(tmp, target)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return [target for target, _ in jobs]


def write_json(path: Path, data: Any) -> Path:
    """A JSON file, written atomically."""
    return atomic_write([(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2), "utf-8"))])[0]

"""Writing a command's output files: checked before any work, written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

from attnscope.errors import UserError


def check_output_path(path: Path | None, flag: str) -> None:
    """A UserError when `path` (given with `flag`) cannot be written: no such directory, or a directory."""
    if path is not None and not path.parent.is_dir():
        raise UserError(f"{flag} {path}: directory {path.parent} does not exist")
    if path is not None and path.is_dir():
        raise UserError(f"{flag} {path}: is a directory")


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a failure leaves nothing half-written."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)

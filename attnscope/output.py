"""Writing a command's output files: checked before any work, written after it, all or none.

A path that is a regular file, or that does not exist yet, is written atomically: into a temporary
file in its directory, renamed over the path once every output of the command is written. A symlink
is followed: a link to a regular file (or to nothing yet) has its target written so, the temporary
beside the target and renamed over it, the link left as it is. Anything else (a device such as
/dev/null or /dev/stdout, a FIFO) is written through: opened and written like `cat > PATH` would, so
the node itself is never replaced. A write that fails (a
read-only directory, a full disk) is a `UserError` naming the flag and the path, and leaves no
temporary file and no other output of the command behind.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from attnscope.errors import UserError


def replaced(path: Path) -> bool:
    """Whether `path` is written by rename (a regular file, or nothing yet, itself or as the target
    of its links), not written through."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True


def link_target(path: Path) -> Path:
    """The file a write to `path` lands in: `path`, or the end of its chain of symlinks."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def validate_output_paths(*flags: tuple[str, Path | None]) -> None:
    """A UserError when an output path (given with its flag) cannot be written: its directory does
    not exist or is not writable, it is a directory, or two flags name the same file."""
    seen: dict[str, str] = {}
    for flag, path in flags:
        if path is None:
            continue
        if path.is_dir():
            raise UserError(f"{flag} {path}: is a directory")
        if replaced(path):
            parent = link_target(path).parent
            if not parent.is_dir():
                raise UserError(f"{flag} {path}: directory {parent} does not exist")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"{flag} {path}: directory {parent} is not writable")
            if path.exists() and not os.access(path, os.W_OK):
                raise UserError(f"{flag} {path}: the file is not writable")
        target = os.path.realpath(path)
        same = seen.setdefault(target, flag)
        if same != flag and replaced(Path(target)):  # one file written twice (a device may be)
            raise UserError(f"{same} and {flag} both name {target}")


def write_outputs(given: Iterable[tuple[str, Path | None, str]]) -> None:
    """Write every (flag, path, text) whose path is not None, all or none (module docstring)."""
    outputs = [(flag, Path(path), text) for flag, path, text in given if path is not None]
    staged: list[tuple[Path, Path]] = []  # (temporary file, path) of the outputs written by rename
    renamed: list[Path] = []
    where = ""  # the flag and path being written, for the error
    try:
        for flag, path, text in outputs:
            where = f"{flag} {path}"
            if replaced(path):
                file = link_target(path)  # a link's target, written beside itself: the link stays a link
                fd, name = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
                staged.append((Path(name), file))
                with open(fd, "w", encoding="utf-8") as f:
                    os.fchmod(f.fileno(), _mode(path))
                    f.write(text)
        for flag, path, text in outputs:
            where = f"{flag} {path}"
            if not replaced(path):
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
        for tmp, path in staged:
            where = str(path)
            os.replace(tmp, path)
            renamed.append(path)
    except BaseException as exc:
        for done in [tmp for tmp, _ in staged] + renamed:
            with contextlib.suppress(OSError):
                os.unlink(done)
        if isinstance(exc, OSError):
            raise UserError(f"{where}: cannot write: {exc.strerror or exc}") from None
        raise


def unused_path(directory: Path, stem: str, suffix: str) -> Path:
    """``directory/stem.suffix``, or ``stem-2.suffix``, ``stem-3.suffix``... when that exists."""
    path, n = directory / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = directory / f"{stem}-{n}{suffix}"
    return path


def _mode(path: Path) -> int:
    """The mode of the file at `path`, or the one a new file gets (0o666 less the umask)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask

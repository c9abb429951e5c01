"""Files of a run directory: written atomically (a process killed while writing leaves the old file or the
new one, never half), and the lock that gives a run directory one writer."""

import contextlib
import fcntl
import json
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from jaxunlearn.errors import UserError

LOCK_FILE = ".lock"
"""The lock of a run directory (`RunLock`): JSON {"pid", "host"} of the process holding it."""


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "w") -> None:
    """Write through `write(file)` to a temporary file beside `path`, then rename it over `path`.

    The temporary file is opened normally (not with mkstemp), so the result gets the umask's permissions;
    on any failure it is removed and `path` is left as it was.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, mode.replace("w", "x")) as file:
            write(file)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """`text` as the whole content of `path`, atomically."""
    atomic_write(path, lambda file: file.write(text))


def write_json(path: str | os.PathLike, value: Any) -> None:
    """`value` as indented JSON, atomically."""
    atomic_write(path, lambda file: file.write(json.dumps(value, indent=2) + "\n"))


def check_writable(path: str | os.PathLike, what: str) -> None:
    """UserError unless a file can be written at `path`, its missing directories created: checked before a
    command's work, so that a long run does not fail at its last write. `what` names the setting."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory, not a file")
    existing = next(p for p in path.absolute().parents if p.exists())
    try:  # a file created and removed at once: permissions alone do not tell (root, /proc, read-only mounts)
        if not existing.is_dir():
            raise NotADirectoryError
        tempfile.TemporaryFile(dir=existing).close()
    except OSError:
        raise UserError(f"cannot write {what} {path}: {existing} is not a writable directory") from None


def read_log(path: str | os.PathLike) -> list[tuple[str, dict[str, Any]]]:
    """The (line, record) pairs of a JSON-lines log ([] when there is none). A last line torn by a kill
    mid-write is dropped; any other line that is not a JSON object is a UserError."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError
        except ValueError:
            if number == len(lines):
                break
            raise UserError(f"{path} line {number} is not a log line; the run's logs are corrupt") from None
        records.append((line, record))
    return records


def is_leftover(path: Path) -> bool:
    """A temporary file that `atomic_write` leaves behind only when the process was killed mid-write."""
    return path.is_file() and path.name.endswith(".tmp")


class RunLock:
    """The one writer of a run directory: an exclusive OS lock (`fcntl.flock`) on the directory itself, held
    from before the first write until `release()` or the end of the process; `directory/.lock` records the
    holder's pid and host, for messages only.

    `RunLock(directory)` takes it at once or raises UserError naming the process that holds it. The kernel frees
    the lock when its process dies, kill -9 included, so there is no stale lock to take over and no moment at
    which two processes hold it; a record left by a dead process is simply overwritten. The lock is on the
    directory's inode, not on a file in it: deleting or replacing `.lock` cannot hand the run to a second
    writer. On a network file system the lock reaches other hosts where the file system supports locking
    (NFS does; gcsfuse guards only the processes of one host).

    Within one process the lock is re-entrant: taking it again for the same directory (a library call nested
    in another that holds it) returns at once, and the outermost release frees it.
    """

    _held: dict[Path, list] = {}
    """This process's locks: resolved directory → [file descriptor, depth]."""

    def __init__(self, directory: str | os.PathLike, *, wait: float = 0.0):
        self.directory = Path(os.path.realpath(directory))
        self.path = self.directory / LOCK_FILE
        self.holder = {"pid": os.getpid(), "host": socket.gethostname()}
        held = RunLock._held.get(self.directory)
        if held is not None:
            held[1] += 1
            return
        RunLock._held[self.directory] = [self._take(time.monotonic() + wait), 1]

    def _take(self, deadline: float) -> int:
        """wait: seconds to keep trying while another process holds it (a brief writer, such as another
        evaluation writing its metrics), before the UserError."""
        while True:
            descriptor = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                os.close(descriptor)
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                holder = _read_holder(self.path)
                raise UserError(f"{self.directory} is in use by process {holder.get('pid', '?')} on "
                                f"{holder.get('host', '?')}; wait for it to end") from None
            except BaseException:
                os.close(descriptor)
                raise
        try:
            write_text(self.path, json.dumps(self.holder))
        except OSError:
            pass  # the record is only for messages; the lock is held
        return descriptor

    def release(self) -> None:
        """Free the lock (the outermost release of this process's nested ones), deleting the record first."""
        held = RunLock._held.get(self.directory)
        if held is None:
            return
        held[1] -= 1
        if held[1]:
            return
        del RunLock._held[self.directory]
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(held[0])

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(path: Path) -> dict[str, Any]:
    """The pid and host a lock record holds ({} when there is none)."""
    try:
        holder = json.loads(path.read_bytes() or b"{}")
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def owned_directory(directory: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold `directory` (created if missing) as its one writer (`RunLock`) for the block: an experiment's or an
    audit's output, a report. When the block raises, a directory this call created is removed again if
    nothing was written into it (`what` names the setting in messages)."""
    path = Path(directory)
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot write to {what} {path}: {error.strerror or error}") from None
    lock = RunLock(path)
    try:
        yield path
    except BaseException:
        lock.release()
        if not existed:
            try:
                path.rmdir()
            except OSError:
                pass
        raise
    lock.release()

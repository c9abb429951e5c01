"""Files of a run directory: written atomically (a process killed while writing leaves the old file or the
new one, never half), and the lock that gives a run directory one writer."""

import json
import os
import secrets
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from jaxunlearn.errors import UserError

LOCK_FILE = ".lock"
"""The lock of a run directory: JSON {"pid", "host", "token"} of the process writing it."""


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
    """The one writer of a run directory, held from before its first write until the run ends.

    `RunLock(directory)` takes `directory/.lock` or raises UserError naming the process that holds it. A lock
    left by a dead process of this host is taken over; one of another host is not (its process cannot be
    checked from here), and the message says how to clear it.
    """

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / LOCK_FILE
        self.holder = {"pid": os.getpid(), "host": socket.gethostname(), "token": secrets.token_hex(8)}
        for _ in range(3):
            if self._create():
                return
            self._take_over_if_stale()
        raise UserError(f"cannot take the lock {self.path}: other processes keep taking it")

    def _create(self) -> bool:
        """Create the lock with its content complete (a hard link of a written file), False if it exists."""
        temporary = self.path.with_name(f"{LOCK_FILE}.{self.holder['token']}.tmp")
        temporary.write_text(json.dumps(self.holder))
        try:
            os.link(temporary, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            temporary.unlink(missing_ok=True)

    def _take_over_if_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except FileNotFoundError:
            return  # released meanwhile
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{self.path} is not a lock this program wrote; delete it if no run uses "
                            f"{self.path.parent}") from None
        if host != self.holder["host"] or _alive(pid):
            raise UserError(f"{self.path.parent} is in use by process {pid} on {host}; wait for it to end, or "
                            f"delete {self.path} if that process is gone")
        stale = self.path.with_name(f"{LOCK_FILE}.{self.holder['token']}.stale.tmp")
        try:
            os.rename(self.path, stale)  # of several processes taking over, one rename succeeds
        except FileNotFoundError:
            return
        stale.unlink()

    def release(self) -> None:
        """Remove the lock if it is still this one's."""
        try:
            if json.loads(self.path.read_text()).get("token") == self.holder["token"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

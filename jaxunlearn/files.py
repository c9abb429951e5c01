"""Files written atomically: a process killed while writing leaves the old file or the new one, never half."""

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


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


def write_json(path: str | os.PathLike, value: Any) -> None:
    """`value` as indented JSON, atomically."""
    atomic_write(path, lambda file: file.write(json.dumps(value, indent=2) + "\n"))

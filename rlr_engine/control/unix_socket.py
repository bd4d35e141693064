"""Addresses of a run's control socket, whatever the depth of its run directory.

A Unix socket's address holds at most 107 bytes on Linux (108 with its terminating NUL; 103 on
macOS), while run directories live wherever the user keeps runs. A path too long to bind or
connect to is reached through a descriptor of its directory instead: ``/proc/self/fd/N/<name>``
is short, and the kernel resolves it to the same directory, so the socket file is created (and
found) where it belongs. Only where there is no /proc (macOS) is a deep path a problem; then
``socket_path_problem`` says so before anything is created. Torch-free: the dashboard uses it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MAX_ADDRESS_BYTES = 103 if sys.platform == "darwin" else 107
PROC_FD = Path("/proc/self/fd")


def _fits(path: str | Path) -> bool:
    return len(os.fsencode(str(path))) <= MAX_ADDRESS_BYTES


@contextmanager
def socket_address(path: str | Path) -> Iterator[str]:
    """An address naming the socket file ``path`` for ``bind``/``connect``, valid inside the
    ``with``: the path itself when it fits, else the path through a descriptor of its directory
    (FileNotFoundError when that directory does not exist)."""
    path = Path(path)
    if _fits(path) or not PROC_FD.is_dir():
        yield str(path)
        return
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"{PROC_FD}/{directory}/{path.name}"
    finally:
        os.close(directory)


def socket_path_problem(path: str | Path) -> str | None:
    """Why a control socket cannot live at ``path`` (too long, and no /proc to shorten it), or None."""
    if _fits(path) or PROC_FD.is_dir():
        return None
    size = len(os.fsencode(str(path)))
    return (
        f"its control socket {path} would be {size} bytes long; a Unix socket's path may have at most "
        f"{MAX_ADDRESS_BYTES}"
    )

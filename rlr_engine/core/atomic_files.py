"""Files replaced atomically: written to a temporary file in the same directory, flushed to the
disk, then renamed over the old one. A kill (or a power cut) mid-write leaves the previous
version whole; readers never see half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary handle whose contents replace ``path`` when the block ends without an error
    (and are discarded when it raises). The new file is readable by its owner only."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # the rename itself reaches the disk with the directory
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename is still atomic


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_file(path) as handle:
        handle.write(text.encode("utf-8"))

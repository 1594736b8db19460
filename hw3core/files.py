"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one."""
import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The parent folder is created. The temporary file sits in the same folder so the final rename
    never crosses file systems.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text_atomic(path, text):
    """Write ``text`` as UTF-8 (no byte-order mark) with "\n" line ends, atomically.

    File names that are not valid UTF-8 reach Python as surrogate escapes; they are written back
    as their original bytes, so a name in the output is byte-for-byte the name on disk.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            f.write(text)

"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one.
Files get the permissions an ordinary open() gives under the user's umask. A destination that
cannot be written is a UserError (one line), found before any work where the caller checks first.
"""
import contextlib
import os
import tempfile
from pathlib import Path

from .errors import UserError


def _umask():
    mask = os.umask(0o022)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def _cannot_write(where, err):
    return UserError(f"cannot write {where}: {err.strerror or err}")


def _require_no_file_above(folder, named):
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"cannot write {named}: {existing} is a file, not a folder")


_MADE = []  # the folders require_writable_folder made in this process, each after its parent


@contextlib.contextmanager
def no_empty_folders_left_on_failure():
    """If the block fails, the folders that require_writable_folder made in it and that are
    still empty are removed: a mistyped checkpoint leaves no empty output folder behind."""
    start = len(_MADE)
    try:
        yield
    except BaseException:
        while len(_MADE) > start:
            with contextlib.suppress(OSError):  # not empty: something was written there
                _MADE.pop().rmdir()
        raise
    finally:
        del _MADE[start:]


def require_writable_folder(folder):
    """Create ``folder`` (and its parents) and check that a file can be written in it."""
    folder = Path(folder)
    _require_no_file_above(folder, folder)
    try:
        _MADE.extend(p for p in reversed((folder, *folder.parents)) if not p.exists())
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise _cannot_write(folder, err) from None
    return folder


def _destination(path):
    """Where a write of ``path`` lands: through symbolic links, whose target the new file
    replaces (renamed onto the link, it would replace the link), and only a regular file or a
    new one."""
    if str(path).endswith(("/", os.sep)) or Path(path).is_dir():  # a trailing / means a folder
        raise UserError(f"{path} is a folder: give the path of the file to write")
    path = Path(path)
    if path.exists() and not path.is_file():
        raise UserError(f"cannot write {path}: not a regular file (a device or a pipe); "
                        "give the path of a file")
    target = Path(os.path.realpath(path))
    _require_no_file_above(target.parent, path)
    return target


def require_writable_file(path):
    """Check that ``path`` can be written as a file (its folder is created)."""
    require_writable_folder(_destination(path).parent)
    return Path(path)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The parent folder is created. A symbolic link is written through: its target is replaced.
    The temporary file sits in the target's folder so the final rename never crosses file
    systems; it is removed whatever happens. An OSError (full disk, no
    permission, a folder in the way) becomes a UserError naming ``path``.
    """
    path, target = Path(path), _destination(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as err:
        raise _cannot_write(path, err) from None
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files, and rename keeps the mode
        os.replace(tmp, target)
    except OSError as err:
        raise _cannot_write(path, err) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def remove_stale_temporaries(folder):
    """Remove the temporary files that atomic writes killed midway (kill -9, power loss) left in
    ``folder``; the files they were to replace are intact. Only names atomic_path makes go
    (".{name}." + mkstemp's 8 random characters + ".tmp"): a user's own ".notes.tmp" stays."""
    for stale in Path(folder).glob(".?*.????????.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def save_npy(array, path):
    """Write ``array`` as a float32 .npy file, atomically."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # np.save appends .npy to a bare path
        np.save(f, np.asarray(array, dtype=np.float32))


def write_text_atomic(path, text):
    """Write ``text`` as UTF-8 (no byte-order mark) with "\n" line ends, atomically.

    File names that are not valid UTF-8 reach Python as surrogate escapes; they are written back
    as their original bytes, so a name in the output is byte-for-byte the name on disk.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            f.write(text)

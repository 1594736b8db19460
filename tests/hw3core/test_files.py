"""Atomic writes: permissions as a plain open() gives them, one-line errors, nothing left over."""
import errno
import os
import stat
import tempfile

import pytest
import torch

from hw3core.checkpoints import save_checkpoint
from hw3core.errors import UserError
from hw3core.files import require_writable_file, require_writable_folder, write_text_atomic


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_an_ordinary_open_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "a.csv", "filename,label\n")
        save_checkpoint({"x": torch.zeros(1)}, tmp_path / "b.pt")
        with open(tmp_path / "plain.txt", "w"):
            pass
    finally:
        os.umask(old)
    for name in ("a.csv", "b.pt", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_folder_given_as_the_file_is_one_line(tmp_path):
    with pytest.raises(UserError, match="is a folder: give the path of the file"):
        require_writable_file(tmp_path)
    with pytest.raises(UserError, match="is a folder"):
        write_text_atomic(tmp_path, "x")
    # a folder yet to be made, by its trailing slash: not a file named as the folder
    with pytest.raises(UserError, match="new/ is a folder: give the path of the file"):
        require_writable_file(f"{tmp_path}/new/")
    assert not (tmp_path / "new").exists()


def test_a_path_through_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"file, not a folder"):
        require_writable_file(tmp_path / "file" / "out.csv")
    with pytest.raises(UserError, match=r"cannot write .*out.csv: .*file is a file, not a folder"):
        write_text_atomic(tmp_path / "file" / "out.csv", "x")


def test_a_link_is_written_through_to_its_target_and_a_device_or_pipe_refused(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "target.csv").write_text("old")
    (tmp_path / "link.csv").symlink_to(tmp_path / "target.csv")
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "runs" / "new.csv")
    for link in ("link.csv", "dangling.csv"):
        require_writable_file(tmp_path / link)
        write_text_atomic(tmp_path / link, "filename,label\n")
        assert (tmp_path / link).is_symlink()  # the link stays; its target holds the file
        assert (tmp_path / link).read_text() == "filename,label\n"
    assert leftovers(tmp_path) == leftovers(tmp_path / "runs") == []
    os.mkfifo(tmp_path / "pipe")  # as /dev/stdout: renamed onto, a device would be replaced
    with pytest.raises(UserError, match="cannot write .*pipe: not a regular file"):
        require_writable_file(tmp_path / "pipe")
    with pytest.raises(UserError, match="cannot write .*pipe: not a regular file"):
        write_text_atomic(tmp_path / "pipe", "x")
    assert stat.S_ISFIFO(os.stat(tmp_path / "pipe").st_mode)


def test_a_folder_that_refuses_files_is_one_line(tmp_path, monkeypatch):
    # CI runs as root, where chmod blocks nothing: the refusal is simulated
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(UserError, match="cannot write .*: Permission denied"):
        require_writable_folder(tmp_path / "out")
    with pytest.raises(UserError, match="cannot write .*: Permission denied"):
        write_text_atomic(tmp_path / "out.csv", "x")
    assert not (tmp_path / "out.csv").exists()


def test_a_full_disk_is_one_line_and_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "pred.csv"
    write_text_atomic(path, "old\n")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(UserError, match="cannot write .*pred.csv: No space left on device"):
        write_text_atomic(path, "new\n")
    assert path.read_text() == "old\n" and leftovers(tmp_path) == []


def test_a_character_device_is_refused_before_any_write():
    from pathlib import Path

    from hw3core.files import _destination

    # only looked at: /dev/null is never opened, here or by the code under test
    with pytest.raises(UserError, match="cannot write /dev/null: not a regular file"):
        _destination(Path("/dev/null"))

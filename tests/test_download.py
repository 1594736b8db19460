"""hw3_download.sh against a local HTTP server on 127.0.0.1."""
import functools
import hashlib
import http.server
import shutil
import stat
import subprocess
import threading

import pytest
import torch

from tests.conftest import ROOT, script_env


@pytest.fixture
def server(tmp_path):
    """(folder served, its URL) on 127.0.0.1; skips where wget or loopback networking is missing."""
    if shutil.which("wget") is None:
        pytest.skip("wget is not installed: hw3_download.sh fetches with it")
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    try:
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    except OSError as err:
        pytest.skip(f"no loopback networking here ({err})")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def download(dest, *args, **urls):
    return subprocess.run(["bash", "-c", 'umask 022 && exec bash "$0" "$@"',
                           str(ROOT / "hw3_download.sh"), *args],
                          env=script_env(HW3_CKPT_DIR=str(dest), **urls),
                          capture_output=True, text=True, timeout=120)


def test_downloads_verifies_and_skips_present_files(server, tmp_path):
    served, url = server
    torch.save({"w": torch.ones(2)}, served / "vit.pth")
    torch.save({"model": {"w": torch.zeros(2)}}, served / "catr.pth")
    dest = tmp_path / "checkpoints"
    urls = dict(HW3_VIT_URL=f"{url}/vit.pth", HW3_CATR_URL=f"{url}/catr.pth",
                HW3_P1_URL=f"{url}/vit.pth")
    run = download(dest, **urls)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["B_16_imagenet1k.pth", "catr_v3.pth",
                                                      "p1_vit.pt"]
    assert torch.equal(torch.load(dest / "catr_v3.pth", weights_only=True)["model"]["w"],
                       torch.zeros(2))
    catr = dest / "catr_v3.pth"
    assert stat.S_IMODE(catr.stat().st_mode) == 0o644  # as an ordinary file under umask 022
    digest = hashlib.sha256(catr.read_bytes()).hexdigest()
    assert f"{catr}: {catr.stat().st_size} bytes, sha256 {digest}" in run.stdout
    check = download(dest, "--check")  # p1_vit.pt too, once present, without HW3_P1_URL
    assert check.returncode == 0 and f"sha256 {digest}" in check.stdout
    assert str(dest / "p1_vit.pt") in check.stdout
    empty = download(tmp_path / "nothing yet", "--check")
    assert empty.returncode != 0 and f"missing {tmp_path / 'nothing yet' / 'catr_v3.pth'}" in (
        empty.stderr)
    catr.write_bytes(catr.read_bytes()[:100])  # damaged after the download
    assert download(dest, "--check").returncode != 0
    catr.write_bytes(b"")  # an empty file is no download: fetched again
    (served / "vit.pth").unlink()  # present files are not fetched again
    again = download(dest, **urls)
    assert again.returncode == 0 and again.stdout.count("have ") == 2
    assert hashlib.sha256(catr.read_bytes()).hexdigest() == digest


class Pickled:
    """An object that a weights-only load refuses to rebuild (it would run code to do so)."""


def test_broken_missing_or_unsafe_downloads_leave_nothing(server, tmp_path):
    served, url = server
    torch.save({"w": torch.ones(1000)}, served / "whole.pth")
    (served / "broken.pth").write_bytes((served / "whole.pth").read_bytes()[:300])
    torch.save({"model": Pickled()}, served / "unsafe.pth")  # loads only with weights_only=False
    dest = tmp_path / "checkpoints"
    run = download(dest, HW3_VIT_URL=f"{url}/broken.pth", HW3_CATR_URL=f"{url}/absent.pth",
                   HW3_P1_URL=f"{url}/unsafe.pth")
    assert run.returncode != 0
    assert list(dest.iterdir()) == []
    assert f"{url}/broken.pth" in run.stderr and str(dest / "B_16_imagenet1k.pth") in run.stderr
    assert f"{url}/absent.pth" in run.stderr and str(dest / "catr_v3.pth") in run.stderr
    assert f"error: {url}/unsafe.pth is not a loadable checkpoint" in run.stderr
    assert "Pickled" in run.stderr  # the weights-only loader's reason


def test_a_python_without_torch_is_told_apart_from_a_bad_file(server, tmp_path):
    served, url = server
    torch.save({"w": torch.ones(2)}, served / "vit.pth")
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")  # `import torch` fails
    fake.chmod(0o755)
    dest = tmp_path / "c"
    run = subprocess.run(["bash", str(ROOT / "hw3_download.sh")],
                         env=script_env(HW3_CKPT_DIR=str(dest), PYTHON=str(fake),
                                        HW3_VIT_URL=f"{url}/vit.pth"),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr == (f"error: torch is not importable with {fake} (activate the project's "
                          "venv, or set PYTHON)\n")
    assert not dest.exists()  # asked before downloading what could not be checked
    dest.mkdir()
    torch.save({"w": torch.ones(2)}, dest / "catr_v3.pth")
    check = subprocess.run(["bash", str(ROOT / "hw3_download.sh"), "--check"],
                           env=script_env(HW3_CKPT_DIR=str(dest), PYTHON=str(fake)),
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 2 and check.stderr.endswith(run.stderr)

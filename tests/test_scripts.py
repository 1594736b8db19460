"""The shell scripts' one rule for the interpreter (venv.sh)."""
import os
import shutil
import subprocess

from tests.conftest import ROOT


def python_chosen(project, **env):
    environment = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    environment.update(env)
    done = subprocess.run(["bash", "-c", f". '{project}/venv.sh' && hw3_python"],
                          env=environment, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_python_is_PYTHON_else_the_venv_beside_the_scripts_else_python3(tmp_path):
    project = tmp_path / "a project"
    project.mkdir()
    shutil.copy(ROOT / "venv.sh", project / "venv.sh")
    assert python_chosen(project) == "python3"
    venv_python = project / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("#!/bin/sh\n")
    venv_python.chmod(0o755)
    assert python_chosen(project) == str(venv_python)
    assert python_chosen(project, PYTHON="/opt/py/bin/python3") == "/opt/py/bin/python3"

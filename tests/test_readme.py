"""What the README quotes from the code is what the code says."""
import pytest

from tests.conftest import ROOT
from p1.train import parse_args


def test_the_readme_lists_p1_train_py_help_as_it_is(monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    start = readme.index("usage: train.py")
    quoted = readme[start:readme.index("```", start)]
    monkeypatch.setenv("COLUMNS", "80")  # the width the README's copy was taken at
    monkeypatch.setattr("sys.argv", ["train.py"])
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert capsys.readouterr().out == quoted

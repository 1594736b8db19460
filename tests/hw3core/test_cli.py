"""The command line every script shares: numbers out of range and unknown devices are one argparse
line, not a traceback from torch."""
import argparse

import pytest

from hw3core.cli import at_least


def test_at_least_accepts_the_bound_and_above():
    assert at_least(1)("1") == 1 and at_least(0)("7") == 7
    assert at_least(0.0, float)("0") == 0.0 and at_least(0.0, float)("1e-4") == 1e-4
    assert at_least(0.0, float, below=1.0)("0.99") == 0.99
    assert at_least(0.0, float, most=1.0)("1") == 1


@pytest.mark.parametrize("number, text, message", [
    (at_least(1), "0", "must be at least 1, not 0"),
    (at_least(0), "-2", "must be at least 0, not -2"),
    (at_least(1), "1.5", "'1.5' is not an integer"),
    (at_least(0.0, float), "-1e-3", "must be at least 0.0, not -1e-3"),
    (at_least(0.0, float), "nan", "must be at least 0.0, not nan"),
    (at_least(0.0, float), "fast", "'fast' is not a number"),
    (at_least(0.0, float), "inf", "must be at least 0.0, not inf"),  # --lr inf trains to NaN
    (at_least(0.0, float, below=1.0), "1", "must be at least 0.0 and below 1.0, not 1"),
    (at_least(0.0, float, most=1.0), "1.5", "must be at least 0.0 and at most 1.0, not 1.5")])
def test_at_least_refuses_with_the_reason(number, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        number(text)


def test_a_parser_turns_it_into_one_line_and_status_2(capsys, monkeypatch):
    from hw3core.cli import parser

    monkeypatch.setattr("sys.argv", ["train.py"])
    script = parser("Train a model.")
    script.add_argument("--epochs", type=at_least(1))
    for argv, message in ((["--epochs", "0"], "argument --epochs: must be at least 1, not 0"),
                          (["--lr", "3"], "unrecognized arguments: --lr 3")):
        with pytest.raises(SystemExit) as exit_info:
            script.parse_args(argv)
        assert exit_info.value.code == 2
        # the one line alone, not argparse's usage before it
        assert capsys.readouterr().err == f"train.py: error: {message} (see train.py --help)\n"


def test_device_options_are_the_same_everywhere_and_refuse_unknown_names(capsys):
    from hw3core.cli import add_device_options

    parser = argparse.ArgumentParser(prog="train.py")
    add_device_options(parser, precision=True)
    assert vars(parser.parse_args([])) == {"device": "auto", "precision": "auto"}
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--device", "gpu"])
    assert exit_info.value.code == 2
    assert "argument --device: invalid choice: 'gpu'" in capsys.readouterr().err


def test_a_scripts_help_describes_it_by_its_docstrings_whole_first_paragraph():
    from hw3core.cli import parser

    doc = "Build the report from the runs,\nthen the figures.\n\n    python build.py --out r.pdf\n"
    assert parser(doc).description == "Build the report from the runs, then the figures."


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped one
def test_ctrl_c_that_python_drops_in_a_finaliser_still_ends_the_run_as_interrupted(capsys):
    import os
    import signal

    from hw3core.cli import run_cli

    finished = []

    class Finaliser:  # as a garbage collector's callback: Python prints its exception, goes on
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)

    def main(argv):
        Finaliser()
        finished.append(True)

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main)
    assert finished and exit_info.value.code == 130
    assert capsys.readouterr().err.endswith("interrupted\n")
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is back


def test_run_cli_returns_mains_status_and_makes_a_user_error_one_line(capsys):
    from hw3core.cli import run_cli
    from hw3core.errors import UserError

    assert run_cli(lambda argv: 1) == 1  # a benchmark's "some measurement failed"

    def refuse(argv):
        raise UserError("--device cuda asked for, but no CUDA GPU is visible")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(refuse)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --device cuda asked for, but no CUDA GPU is visible\n"

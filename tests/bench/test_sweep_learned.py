"""The learned-quality bars the tests assert are those bench/sweep_learned.py measured against."""
import inspect
import json

import pytest

from bench import sweep_learned
from tests.conftest import LEARNED_BARS, ROOT

RECORDED = json.loads((ROOT / "bench" / "results" / "sweep_learned.json").read_text())


def test_every_bar_was_swept_and_every_swept_run_clears_it():
    # a bar changed without rerunning the sweep, or raised above a run it gave, fails here
    assert RECORDED["bars"] == {
        name: {"test": sweep_learned.TESTS[run], "bar": bar, "higher_is_better": higher}
        for name, (run, _, bar, higher) in LEARNED_BARS.items()}
    assert len(RECORDED["runs"]) >= 10
    for name, (_, _, bar, higher) in LEARNED_BARS.items():
        for run in RECORDED["runs"]:
            assert (run[name] >= bar) if higher else (run[name] < bar), (name, run)


@pytest.mark.parametrize("run", sorted({run for run, *_ in LEARNED_BARS.values()}))
def test_the_test_the_sweep_names_asserts_that_runs_bars(run):
    path, name = sweep_learned.TESTS[run].split("::")
    module = path.removesuffix(".py").replace("/", ".")
    source = inspect.getsource(getattr(__import__(module, fromlist=[name]), name))
    assert f'assert_learned("{run}", ' in source

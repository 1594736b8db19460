"""The training curves' figure."""
import matplotlib

from hw3core import figures


def test_curves_draw_each_metric_at_the_epochs_that_have_it(tmp_path, monkeypatch):
    # a run whose first epoch had no validation (resumed from a version that let it be added)
    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.update(fig=fig))
    history = [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.5, "val_loss": 1.7}]
    figures.plot_history(history, tmp_path / "curves.png",
                         [("loss", "loss", [("train_loss", "train"), ("val_loss", "val")])])
    (ax,) = drawn["fig"].axes
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
             for line in ax.lines}
    assert lines == {"train": ([1, 2], [2.0, 1.5]), "val": ([2], [1.7])}
    matplotlib.pyplot.close(drawn["fig"])

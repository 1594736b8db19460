"""Figures: a heat map laid over the image it belongs to, and atomic PNG saving. No windows."""
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from .files import atomic_path

plt.switch_backend("Agg")  # files only, before any figure exists: no display is needed


def show_image(ax, image, title=None):
    image = np.asarray(image)
    ax.imshow(image, extent=(0, image.shape[1], image.shape[0], 0))
    ax.set_axis_off()
    if title is not None:
        # a title at a given height is not refitted around the axis decorations at every draw,
        # which an image's axes lack anyway: a quarter of a caption figure's drawing time
        ax.set_title(title, y=1.0)


def overlay_heatmap(ax, image, heat, cell=None, title=None, alpha=0.55, cmap="jet",
                    vmin=None, vmax=None, interpolation="bilinear"):
    """Draw ``image`` and ``heat`` (gh x gw) over it; each map cell covers ``cell`` pixels.

    ``cell`` is (height, width) in image pixels. By default the map spans the image exactly; a
    captioner's 16-pixel cells may overhang the image's edge, and the overhang is cut off, so
    every cell sits on the pixels it was computed from.
    """
    image = np.asarray(image)
    height, width = image.shape[:2]
    gh, gw = heat.shape
    cell_h, cell_w = cell if cell is not None else (height / gh, width / gw)
    show_image(ax, image, title)
    artist = ax.imshow(heat, extent=(0, gw * cell_w, gh * cell_h, 0), alpha=alpha, cmap=cmap,
                       vmin=vmin, vmax=vmax, interpolation=interpolation)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    return artist


def save_figure(fig, path, dpi=100):
    """Save ``fig`` as PNG at ``path`` atomically, then free it (also when saving fails)."""
    try:
        with atomic_path(path) as tmp:
            # zlib's fastest level: PIL's default (6) spent half of a caption figure's time
            # compressing it, for files 15 to 20% smaller
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight",
                        pil_kwargs={"compress_level": 1})
    finally:
        plt.close(fig)


def plot_history(history, path, panels):
    """Per-epoch metrics from ``history`` (one dict per epoch) as one PNG.

    ``panels`` is [(title, y label, [(metric key, legend label), ...]), ...]; a metric is drawn
    at the epochs that have it (none without a validation set).
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, ylabel, lines) in zip(axes[0], panels):
        for key, label in lines:
            having = [h for h in history if key in h]
            if having:
                ax.plot([h["epoch"] for h in having], [h[key] for h in having], "o-",
                        label=label)
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    save_figure(fig, path)

"""The Problem 2 figure, laid out and returned unsaved: a caption as the title over a grid of
panels, the image as the model saw it, then each generated word piece's cross-attention map laid
over it (with every head beside the mean if asked)."""
import math
import textwrap

import numpy as np

from hw3core.figures import overlay_heatmap, plt, show_image

PANEL_INCHES = 2.4  # the longer side of one image panel
MIN_PANEL_WIDTH = 1.4  # room for a word-piece title above a narrow image


def panel_inches(aspect):
    """(width, height) of one panel, title line included, for an image of width/height
    ``aspect``."""
    width = max(MIN_PANEL_WIDTH, PANEL_INCHES * min(1.0, aspect))
    return width, PANEL_INCHES * min(1.0, 1 / aspect) + 0.35


def panel_columns(count, aspect):
    """Columns for ``count`` panels so that the whole grid is about 4:3 wide."""
    width, height = panel_inches(aspect)
    return max(1, min(count, round(math.sqrt(count * (4 / 3) * height / width))))


def draw_caption_figure(image, caption, panels, columns, stride, source=None):
    """A figure of ``panels`` in ``columns``: each (title, heat map, or None for the plain image),
    or None for an empty slot; ``source``, what the maps are, is said below them."""
    image = np.asarray(image)
    width, height = panel_inches(image.shape[1] / image.shape[0])
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * width, rows * height + 0.6),
                             squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.flat):
        if i >= len(panels) or panels[i] is None:
            ax.set_axis_off()
        elif panels[i][1] is None:
            show_image(ax, image, panels[i][0])
        else:
            overlay_heatmap(ax, image, panels[i][1], cell=(stride, stride), title=panels[i][0])
    # an untrained model may end at once: a figure without a title would look cut off
    title = caption.strip() or "(empty caption)"
    fig.suptitle(textwrap.fill(title, width=max(30, int(columns * width * 9))), fontsize=14)
    if source is not None:
        fig.supxlabel(source, fontsize=10, color="0.3")
    return fig


def figure_panels(pieces, maps, per_head):
    """(panels, columns): <start>, then each token's map; with per-head maps, one row per token
    (the mean, then every head)."""
    if not per_head:
        return [("<start>", None)] + list(zip(pieces, maps)), None
    heads = maps.shape[1]
    panels = [("<start>", None)] + [None] * heads
    for piece, token_maps in zip(pieces, maps):
        panels.append((f"{piece} (mean)", token_maps.mean(0)))
        panels += [(f"{piece} h{h}", token_maps[h]) for h in range(heads)]
    return panels, heads + 1


def maps_source(layer, layers, heads, per_head):
    """What a figure's maps are: decoder ``layer`` (counted from 0) of ``layers``, ``heads``."""
    which = "the last" if layer == layers - 1 else "the first" if layer == 0 else None
    maps = ("the mean over its heads, then each head" if per_head
            else f"the mean over its {heads} heads")
    # red is the highest of each map, not of the figure: a word's map near uniform looks as hot
    return (f"cross-attention of decoder layer {layer} ({which + ' ' if which else ''}of {layers}, "
            f"counted from 0), {maps}; each map on its own colour scale")


def caption_figure(image, caption, pieces, maps, per_head, stride, source=None):
    """The figure of one captioned PIL ``image``: ``maps`` holds one map per word piece in
    ``pieces``, (heads, h, w) each with ``per_head``; cells of ``stride`` pixels; ``source``: what
    the maps are (maps_source)."""
    panels, columns = figure_panels(pieces, maps, per_head)
    columns = columns or panel_columns(len(panels), image.width / image.height)
    return draw_caption_figure(image, caption, panels, columns, stride, source)

"""The Problem 1 figures, laid out and returned unsaved: the position-embedding similarity
mosaic, and a [CLS] attention map beside the image it belongs to (one map, one per head, or
over the original photo)."""
import math

import numpy as np

from hw3core.figures import overlay_heatmap, plt, show_image
from p1.data import true_class

MAP_CMAP = "jet"  # the overlay's colours, so the map panel and the overlay read the same way


def prediction_heading(path, probability, class_names):
    """"NAME: predicted class C (P%)", then the true class where the file's name or folder gives
    one (p1.data.true_class)."""
    predicted = int(probability.argmax())
    heading = (f"{path.name}: predicted class {class_names[predicted]} "
               f"({float(probability[predicted]):.1%})")
    true = true_class(path, class_names)
    return heading if true is None else f"{heading}, true class {true}"


# --- position embeddings ------------------------------------------------------------------------

def similarity_mosaic(similarity, gap=1):
    """Lay out (rows, cols, rows, cols) similarity maps as one image, tile [r, c] at row r,
    column c, tiles separated by ``gap`` NaN cells (drawn as background)."""
    rows, cols, tile_h, tile_w = similarity.shape
    padded = np.pad(np.asarray(similarity, dtype=np.float32),
                    ((0, 0), (0, 0), (0, gap), (0, gap)), constant_values=np.nan)
    mosaic = padded.transpose(0, 2, 1, 3).reshape(rows * (tile_h + gap), cols * (tile_w + gap))
    return mosaic[:rows * (tile_h + gap) - gap, :cols * (tile_w + gap) - gap]


def _tile_ticks(count, tile, gap):
    """Tick positions at the tile centres and 1-based labels, thinned out past ~25 tiles."""
    step = max(1, math.ceil(count / 25))
    indices = [i for i in range(count) if i % step == 0 or i == count - 1]
    return [i * (tile + gap) + (tile - 1) / 2 for i in indices], [str(i + 1) for i in indices]


def plot_position_similarity(similarity, title):
    """One imshow of the whole mosaic: 576 subplots for ViT-B/16 at 384 would take minutes."""
    rows, cols, tile_h, tile_w = similarity.shape
    gap = 1
    mosaic = similarity_mosaic(similarity, gap)
    longest = max(mosaic.shape)
    fig_w = 1.5 + 8.0 * mosaic.shape[1] / longest  # room on the right for the colour bar
    fig_h = 1.2 + 8.0 * mosaic.shape[0] / longest
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), layout="constrained")
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    image = ax.imshow(mosaic, cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest")
    for axis, count, tile in ((ax.xaxis, cols, tile_w), (ax.yaxis, rows, tile_h)):
        positions, labels = _tile_ticks(count, tile, gap)
        axis.set_ticks(positions, labels, fontsize=8 if count <= 16 else 6)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.6, aspect=30, label="cosine similarity")
    return fig


# --- attention maps -----------------------------------------------------------------------------

def _panel_width(image):
    """Inches for a panel of ``image`` 4 inches high; never narrower than its title's line."""
    return max(4.0 * image.shape[1] / image.shape[0], 2.8)


def _attention_colorbar(fig, artist, ax, tokens, **kwargs):
    """The colour bar of a map drawn in its own range, with evenly spread attention (1 /
    ``tokens``) marked where it falls inside: however flat, a map in its own range runs from
    blue to red, and the mark shows whether its red stands out at all."""
    bar = fig.colorbar(artist, ax=ax, label=f"attention weight (dashed: 1/{tokens}, spread evenly)",
                       **kwargs)
    low, high = artist.get_clim()
    if low <= 1 / tokens <= high:
        # black dashes on white: seen on every colour of the map
        bar.ax.axhline(1 / tokens, color="white", linewidth=3)
        bar.ax.axhline(1 / tokens, color="black", linestyle=(0, (3, 2)), linewidth=1.5)
    return bar


def plot_single_map(image, heat, map_title, heading, tokens):
    height, width = image.shape[:2]
    panel = _panel_width(image)
    fig, (ax_image, ax_map, ax_overlay) = plt.subplots(
        1, 3, figsize=(3 * panel + 1.2, 4.8), layout="constrained")
    show_image(ax_image, image, f"input as the model saw it\n({height} high, {width} wide)")
    # The map's own range: attention is often nearly uniform, and a scale from 0 would hide
    # where it is highest. The colour bar gives the actual weights.
    vmin, vmax = float(heat.min()), float(heat.max())
    artist = ax_map.imshow(heat, cmap=MAP_CMAP, vmin=vmin, vmax=vmax, interpolation="nearest",
                           extent=(0, width, height, 0))
    ax_map.set_axis_off()
    ax_map.set_title(map_title)
    _attention_colorbar(fig, artist, ax_map, tokens, shrink=0.8)
    overlay_heatmap(ax_overlay, image, heat, title="the map over the input", cmap=MAP_CMAP,
                    vmin=vmin, vmax=vmax)
    fig.suptitle(heading, fontsize="x-large")
    return fig


def plot_on_original(original, heat, map_title, heading, tokens):
    """The photo at its own aspect ratio on the left; on the right the map over it, one cell per
    patch. The model's input is a plain resize of the photo, so patch (r, c) covers the same
    share of the photo: the cells are stretched with it and their edges fall on the patches'."""
    original = np.asarray(original)
    panel = _panel_width(original)
    fig, (ax_photo, ax_map) = plt.subplots(1, 2, figsize=(2 * panel + 1.2, 4.6),
                                           layout="constrained")
    show_image(ax_photo, original,
               f"original ({original.shape[0]} high, {original.shape[1]} wide)")
    artist = overlay_heatmap(ax_map, original, heat, title=map_title, cmap=MAP_CMAP,
                             vmin=float(heat.min()), vmax=float(heat.max()),
                             interpolation="nearest")
    _attention_colorbar(fig, artist, ax_map, tokens, shrink=0.8)
    fig.suptitle(heading, fontsize="large")
    return fig


def plot_head_maps(image, heads_maps, map_title, heading, tokens):
    """The image, the mean over heads and each head's map, on one shared colour scale (so heads
    compare); heads count from 0, as the rows of --save-npy's array and p2's figures do."""
    height, width = image.shape[:2]
    panels = [("mean over heads", heads_maps.mean(axis=0))]
    panels += [(f"head {h}", m) for h, m in enumerate(heads_maps)]
    cols = min(5, len(panels) + 1)
    rows = math.ceil((len(panels) + 1) / cols)
    panel = 0.75 * _panel_width(image)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * panel + 1.2, rows * 3.0 + 1.0),
                             layout="constrained", squeeze=False)
    axes = axes.ravel()
    show_image(axes[0], image, f"input as the model saw it\n({height} high, {width} wide)")
    vmin, vmax = float(heads_maps.min()), float(heads_maps.max())
    for ax, (title, heat) in zip(axes[1:], panels):
        artist = ax.imshow(heat, cmap=MAP_CMAP, vmin=vmin, vmax=vmax, interpolation="nearest",
                           extent=(0, width, height, 0))
        ax.set_title(title)
        ax.set_axis_off()
    for ax in axes[len(panels) + 1:]:
        ax.set_visible(False)
    _attention_colorbar(fig, artist, list(axes), tokens, shrink=0.6)
    fig.suptitle(f"{heading}\n{map_title.replace(chr(10), ', ')}", fontsize="x-large")
    return fig

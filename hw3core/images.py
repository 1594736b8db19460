"""Image files: which files in a folder are images, and opening any of them as an upright RGB image.

Unreadable files never stop a run: they are named on stderr and left out, and everything else goes
on. Other files (notes, hidden files, subfolders) are ignored.
"""
import os
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import UserError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})

# Decoding more pixels than this is refused: a hostile or corrupt header could ask for gigabytes.
# The largest phone sensors (200 MP) pass; Pillow's default (89.5 MP) would refuse their photos.
# Pillow's own check decides (open_rgb turns its warning into a refusal), read when each file
# opens: lower Image.MAX_IMAGE_PIXELS to refuse more.
MAX_PIXELS = 250_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class UnreadableImage(Exception):
    """A file with an image suffix that cannot be decoded; the message names the file and why."""


def is_image_file(path):
    """A file with an image suffix; a link to none too, so that a run names it as unreadable."""
    path = Path(path)
    return ((path.is_file() or path.is_symlink() and not path.exists())
            and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES)


def list_images(folder):
    """The image files directly inside ``folder``, sorted by name (code-point order)."""
    folder = Path(folder)
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


def _holds_images(folder):
    try:
        return folder.is_dir() and any(map(is_image_file, folder.iterdir()))
    except OSError:  # an unreadable subfolder is no hint
        return False


def require_images(folder):
    """``list_images(folder)``, or a UserError when the folder is missing or holds no image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{'not a folder' if folder.exists() else 'not found'}: {folder}")
    try:
        paths = list_images(folder)
    except OSError as err:
        raise UserError(f"cannot read {folder}: {err.strerror or err}") from None
    if not paths:
        # a class-subfolder layout (val/cat/x.jpg) given where a flat folder is read
        nested = sorted(sub.name for sub in folder.iterdir() if _holds_images(sub))
        hint = (f" (its subfolders {', '.join(nested[:3])}{', ...' if len(nested) > 3 else ''} "
                "hold images, but only the folder itself is read: give one of them)"
                if nested else "")
        raise UserError(f"no image files in {folder}{hint}")
    return paths


def require_not_an_input(out, paths, what="one of the input images"):
    """A UserError when the file ``out`` is (or links to) one of the inputs ``paths`` (``what``
    they are, for the message), which writing it would replace."""
    if os.path.realpath(out) in {os.path.realpath(path) for path in paths}:
        raise UserError(f"{out} is {what}, which the output would replace: give another path")


def require_outputs_apart(paths, out):
    """A UserError unless each of ``paths`` gets its own OUT/<stem>.png, away from the images:
    not when two share a stem (x.jpg and x.png), nor when OUT holds an input image, where a
    figure could replace one (x.png) and would be read as an input by the next run."""
    out = Path(os.path.realpath(out))
    # an image's own folder, and what its file is: a folder of links to the images is common,
    # and a figure written through a link (files.atomic_path) replaces what it points to
    if out in {Path(os.path.realpath(Path(path).parent)) for path in paths}:
        raise UserError(f"{out} holds the input images: write the figures to another folder")
    images = {os.path.realpath(path) for path in paths}
    seen = {}
    for path in map(Path, paths):
        if path.stem in seen:
            raise UserError(f"{seen[path.stem]} and {path} would both be written as "
                            f"{path.stem}.png: run them separately")
        seen[path.stem] = path
        written = out / f"{path.stem}.png"
        if os.path.realpath(written) in images:
            raise UserError(f"{written} links to an input image, which its figure would "
                            "replace: write the figures to another folder")


def _to_rgb(img):
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # Pillow's convert("RGB") clips these to 255; scale the real range to 8 bits instead.
        arr = np.asarray(img, dtype=np.float64)
        arr[~np.isfinite(arr)] = 0.0  # a float image's NaN (no data) and infinities: black
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels carry arbitrary colours; show them as white, as a viewer would.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def open_rgb(path):
    """Open ``path`` as an RGB PIL image, EXIF orientation applied. Raises UnreadableImage."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UnreadableImage(f"{path}: more than {Image.MAX_IMAGE_PIXELS:,} pixels, too large "
                              "to decode safely") from None
    except (OSError, ValueError, SyntaxError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UnreadableImage(f"{path}: not a readable image ({reason})") from None


def decoded_bytes(path):
    """The bytes of ``path`` opened by open_rgb, read from its header alone; 0 if unreadable
    or over the pixel limit, as open_rgb refuses it."""
    try:
        with warnings.catch_warnings():  # over the pixel limit: 0 below, open_rgb names it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
    except Exception:  # open_rgb names the file when it fails to read it
        return 0
    limit = Image.MAX_IMAGE_PIXELS
    return 0 if limit is not None and width * height > limit else 3 * width * height


def require_some_readable(paths, where):
    """Before a run: a UserError unless one of ``paths`` (images in ``where``) opens, read from
    its header; the first that does ends the check."""
    require_some_read(any(map(decoded_bytes, paths)), paths, where)


def require_some_read(count, paths, where):
    """A folder run that could use none of its ``paths`` (images in ``where``) is an error."""
    if not count:
        raise UserError(f"none of the {len(paths)} image files in {where} could be read")


def report_written(count, paths, what, destination):
    """The last line of a folder run, on stderr: what it wrote and how many images it skipped."""
    skipped = len(paths) - count
    print(f"wrote {count} {what} to {destination}"
          + (f" ({skipped} unreadable file(s) skipped)" if skipped else ""), file=sys.stderr)


def warn(message):
    """One ``warning: ...`` line on stderr, at once: the run goes on. Written above this
    process's progress bar, not glued to its end."""
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


def or_skip(path, work):
    """``work()``, or None after naming ``path`` on stderr if it fails: one image's error,
    whatever it is, never stops a folder run. A UserError (a wrong option or file, the same for
    every image) still stops it."""
    try:
        return work()
    except UserError:
        raise
    except Exception as err:  # a folder run goes on past anything one image does
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        warn(f"skipping {path}: {type(err).__name__}" + (f": {reason}" if reason else ""))
        return None


class ImageFileDataset:
    """Images from a list of paths, transformed; an unreadable one yields None (see collate_skip).

    Each item is ``(image_tensor, index)``; the index points back into ``paths`` so callers keep
    the file name, target, or original size that belongs to the image. A map-style dataset for
    torch's DataLoader, which needs no base class: this module does without torch, so that the
    scripts check their folders before seconds of importing it.
    """

    def __init__(self, paths, transform):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        try:
            image = open_rgb(self.paths[index])
        except UnreadableImage as err:
            warn(f"skipping {err}")
            return None
        return self.transform(image), index


def collate_list(batch):
    """The readable items as a list, for images of different sizes that cannot be stacked."""
    return [item for item in batch if item is not None]


def collate_skip(batch):
    """Default collation of the readable items; None when a whole batch was unreadable."""
    from torch.utils.data import default_collate

    batch = [item for item in batch if item is not None]
    if not batch:
        return None
    return default_collate(batch)

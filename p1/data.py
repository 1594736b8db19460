"""Labelled image folders, the transforms the ViT sees, and a synthetic set for demos and tests.

Two layouts are recognised automatically:
- the course layout: image files named ``{label}_{id}.ext`` directly in the folder (``26_5064.jpg``
  is class 26); class names are the integer labels;
- one subfolder per class (``train/cat/1.jpg``); class names are the subfolder names.
"""
import json
import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from hw3core.errors import UserError
from hw3core.images import (ImageFileDataset, is_image_file, list_images, require_some_readable,
                            warn)
from hw3core.scenes import COLORS, SHAPES, random_box, render_scene

COURSE_NAME = re.compile(r"(\d+)_.+")


def course_label(path):
    """The label in a course file name (``26_5064.jpg``, ``026_5064.jpg``: "26"), or None."""
    match = COURSE_NAME.fullmatch(Path(path).name)
    return str(int(match.group(1))) if match else None


def true_class(path, class_names):
    """The class that ``path``'s name or folder gives in either layout, where it is one of
    ``class_names``; None for any other image."""
    path = Path(path)
    return next((name for name in (course_label(path), path.parent.name) if name in class_names),
                None)


def discover(folder, class_names=None):
    """Return (samples, class_names); samples are (path, class index) sorted by path.

    ``class_names`` fixes the classes (those of the training set when reading a validation set);
    a file of another class is then an error naming it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{'not a folder' if folder.exists() else 'not found'}: {folder}")
    # a class is a folder with an image in it, not only links to deleted ones
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
                        and any(is_image_file(p) and p.exists() for p in d.iterdir()))
    labelled = []
    loose = list_images(folder)
    if class_dirs and loose:  # which layout was meant is a guess either way
        raise UserError(f"{folder} holds both images ({loose[0].name}, ...) and class folders "
                        f"({class_dirs[0].name}/, ...): keep {{label}}_{{id}}.jpg files or one "
                        "subfolder per class, not both")
    if class_dirs:
        for d in class_dirs:
            labelled += [(p, d.name) for p in list_images(d)]
        order = str  # folder names sort as they are
    else:
        for path in loose:
            label = course_label(path)
            if label is not None:
                labelled.append((path, label))
            else:
                warn(f"skipping {path}: name is not {{label}}_{{id}}.ext")
        order = int
    if not labelled:
        raise UserError(f"no labelled images in {folder} (expected {{label}}_{{id}}.jpg files "
                        "or one subfolder per class)")
    if class_names is None:
        class_names = sorted({name for _, name in labelled}, key=order)
        if len(class_names) < 2:
            raise UserError(f"all the images in {folder} are of one class ({class_names[0]!r}): "
                            "a classifier is trained on two or more")
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [(p, name) for p, name in labelled if name not in index]
    if unknown:
        path, name = unknown[0]
        raise UserError(f"{path}: class {name!r} is not among the training classes")
    require_some_readable([p for p, _ in labelled], folder)
    return [(p, index[name]) for p, name in labelled], list(class_names)


def eval_resize(image_size):
    """The deterministic part of evaluation: the image as uint8, resized to ``image_size``."""
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(tuple(image_size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
    ])


class ScaleNormalize:
    """uint8 images (..., 3, h, w) -> the model's input: float32 scaled to [0, 1], less ``mean``,
    over ``std``, per channel, on the images' device.

    The loaders give uint8 batches, and this runs on a batch once it is on the device: a quarter
    of the bytes to move, and no per-image work. The mean and std are kept on each device:
    torchvision's normalize, given numbers, copies them there at every call, and a copy from the
    host waits for the GPU to finish all it was given.
    """

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self._on_device = {}

    def __call__(self, images):
        if images.device not in self._on_device:
            self._on_device[images.device] = (self.mean.to(images.device),
                                              self.std.to(images.device))
        mean, std = self._on_device[images.device]
        return TF.normalize(TF.to_dtype(images, torch.float32, scale=True), mean, std)


def eval_transform(image_size, mean, std):
    """One image as the model takes it (a loader's batches: eval_resize, then ScaleNormalize)."""
    return v2.Compose([*eval_resize(image_size).transforms, ScaleNormalize(mean, std)])


def train_transform(image_size, augment="randaugment", min_scale=0.25, crop=True, flip=True):
    """Each image draws its own random resized crop (area ``min_scale`` to 1; without ``crop`` a
    plain resize, as eval_resize), horizontal flip and augmentation ``augment``; uint8 images
    (ScaleNormalize makes the model's input of their batch)."""
    policies = {
        "randaugment": [v2.RandAugment(num_ops=2, magnitude=9)],
        "trivialaugment": [v2.TrivialAugmentWide()],
        "none": [],
    }
    size = tuple(image_size)
    resize = (v2.RandomResizedCrop(size, scale=(min_scale, 1.0),
                                   interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
              if crop else v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC,
                                     antialias=True))
    return v2.Compose([
        v2.ToImage(),
        resize,
        *([v2.RandomHorizontalFlip()] if flip else []),
        *policies[augment],
    ])


# label_by="warmth": 1 for a warm colour, 0 for a cool one (another task on the same images, to
# pre-train features that the colour task can start from)
WARM = {"red": 1, "yellow": 1, "green": 0, "blue": 0}


def make_shapes_set(out_dir, count, image_size=64, seed=0, start_id=0, label_by="color"):
    """Write ``count`` images of one coloured shape each, in the course layout.

    The class is the object's colour (index into COLORS), or with ``label_by="warmth"`` whether
    that colour is warm (WARM); its shape, place, size and the background vary, so a model must
    find the object to name the class. The box of every object is written to
    ``out_dir/boxes.json`` ({file name: [x0, y0, x1, y1]}), so attention maps can be checked
    against it. Returns that mapping.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    size = (image_size, image_size)
    colors = list(COLORS)
    boxes = {}
    for i in range(count):
        color = int(rng.integers(len(colors)))
        shape = int(rng.integers(len(SHAPES)))
        box = random_box(size, rng, min_frac=0.25, max_frac=0.45)
        image, _ = render_scene(size, [(SHAPES[shape], colors[color], box)], rng)
        label = color if label_by == "color" else WARM[colors[color]]
        name = f"{label}_{start_id + i}.png"
        image.save(out_dir / name)
        boxes[name] = list(box)
    (out_dir / "boxes.json").write_text(json.dumps(boxes, indent=0))
    return boxes


class LabelledImages(ImageFileDataset):
    """(image, class index) for each of ``samples`` [(path, class index)]; None if unreadable."""

    def __init__(self, samples, transform):
        super().__init__([path for path, _ in samples], transform)
        self.targets = [target for _, target in samples]

    def __getitem__(self, index):
        item = super().__getitem__(index)
        return None if item is None else (item[0], self.targets[index])


class DecodedImages(torch.utils.data.Dataset):
    """What LabelledImages gives (the class index as a tensor on ``device``), from images
    decoded once: each readable file of ``samples`` is decoded (by ``workers`` processes, each
    handing its images over through shared memory: the caller fits them to it) and passed
    through ``prepare`` (e.g. eval_resize) once, and kept as a uint8 tensor on ``device`` (in
    RAM where the cache would take more than a quarter of the GPU's free memory). Each access
    runs ``transform`` (if any) there, in the calling process.

    On a GPU this takes JPEG decoding out of every epoch and the augmentation off the CPU. The
    images keep their own sizes, so each one draws its own crop, flip and augmentation from the
    same policy and, under SeededItems, the same seeds as the CPU path (the draws are made on the
    CPU's generator wherever the image is).
    """

    def __init__(self, samples, prepare, transform, device, workers=0):
        paths = [path for path, _ in samples]
        decoded = DataLoader(ImageFileDataset(paths, prepare), batch_size=None,
                             num_workers=workers)
        self.images = [None] * len(samples)
        for item in decoded:
            if item is not None:
                image, index = item
                # a copy of its own: a worker's tensor keeps a shared-memory file open
                self.images[index] = image.as_subclass(torch.Tensor).clone()
        # on the device too: a batch made there then needs no copy from the host
        self.targets = torch.tensor([target for _, target in samples], dtype=torch.int64,
                                    device=device)
        self.transform = transform
        self.device = device
        if device.type == "cuda":
            cache_bytes = sum(image.numel() for image in self.images if image is not None)
            fits = cache_bytes <= torch.cuda.mem_get_info(device)[0] // 4
            self.images = [None if image is None else
                           image.to(device) if fits else image.pin_memory()
                           for image in self.images]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index]
        if image is None:  # named on stderr when it was decoded
            return None
        image = image.to(self.device, non_blocking=True)
        return (image if self.transform is None else self.transform(image)), self.targets[index]

"""Caption data: CATR's preprocessing, COCO-format caption files, the batches the captioner
trains on, and synthetic scenes whose captions, boxes and masks are known.

A caption file is COCO's: {"images": [{"id", "file_name"}, ...], "annotations": [{"image_id",
"caption"}, ...]}; file names are relative to an image folder given beside it.
"""
import json
import random
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms

from hw3core.errors import UserError
from hw3core.files import write_text_atomic
from hw3core.images import ImageFileDataset, require_some_readable, warn
from hw3core.scenes import COLORS, SHAPES, random_box, render_scene
from p2.tokenizer import END_ID, PAD_ID


def resize_for_catr(image, side):
    """Scale a PIL image so that its longer side is ``side`` pixels, the model's
    config["input_size"] (CATR's: 299), keeping the aspect ratio."""
    scale = side / max(image.size)
    # at least one pixel: a 3,000 x 10 image would otherwise shrink to 299 x 0
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    # Pillow's default for Image.resize, named so that a change of default cannot change captions
    return image.resize(size, Image.Resampling.BICUBIC)


def to_model_input(resized):
    """(3, h, w) float tensor normalised with mean 0.5 and std 0.5."""
    return TF.normalize(TF.to_tensor(resized), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def preprocess(image, side):
    """A PIL image as the model's input tensor; ``side`` is the model's config["input_size"]."""
    return to_model_input(resize_for_catr(image.convert("RGB"), side))


def pad_batch(images):
    """Stack (3, h, w) tensors, zero-padded at the bottom and right, with a mask (B, H, W) that
    is True on padding."""
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    batch = images[0].new_zeros(len(images), 3, height, width)
    mask = torch.ones(len(images), height, width, dtype=torch.bool, device=images[0].device)
    for i, image in enumerate(images):
        batch[i, :, :image.shape[1], :image.shape[2]] = image
        mask[i, :image.shape[1], :image.shape[2]] = False
    return batch, mask


def read_caption_file(json_path, image_dir):
    """[(image path, [captions])] in the file's image order, for images that have captions.

    Raises UserError for a missing or malformed file. Images without captions, captions of
    unknown images and image files that do not exist are left out with a warning naming the file.
    """
    json_path, image_dir = Path(json_path), Path(image_dir)
    if not json_path.is_file():
        raise UserError(f"caption file not found: {json_path}")
    if not image_dir.is_dir():
        raise UserError(f"not a folder: {image_dir}")
    try:
        content = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{json_path} is not JSON ({err})") from None
    if not (isinstance(content, dict) and isinstance(content.get("images"), list)
            and isinstance(content.get("annotations"), list)):
        raise UserError(f"{json_path} is not a COCO caption file (needs 'images' and "
                        "'annotations' lists)")
    names, repeated = {}, 0
    for i, entry in enumerate(content["images"]):
        if not (isinstance(entry, dict) and "id" in entry
                and isinstance(entry.get("file_name"), str)):
            raise UserError(f"{json_path}: images[{i}] needs an 'id' and a 'file_name'")
        repeated += entry["id"] in names
        names[entry["id"]] = entry["file_name"]
    if repeated:
        warn(f"{repeated} image id(s) listed twice in 'images' of {json_path}: the last file "
             "name of each is used")
    captions = {image_id: [] for image_id in names}
    unknown = 0
    for i, entry in enumerate(content["annotations"]):
        if not (isinstance(entry, dict) and "image_id" in entry
                and isinstance(entry.get("caption"), str)):
            raise UserError(f"{json_path}: annotations[{i}] needs an 'image_id' and a 'caption'")
        if entry["image_id"] in captions:
            captions[entry["image_id"]].append(entry["caption"])
        else:
            unknown += 1
    if unknown:
        warn(f"skipping {unknown} caption(s) in {json_path} whose image_id is not in 'images'")
    uncaptioned = sum(not texts for texts in captions.values())
    if uncaptioned:
        warn(f"skipping {uncaptioned} image(s) of {json_path} that have no caption")
    samples, missing = [], []
    for image_id, texts in captions.items():
        path = image_dir / names[image_id]
        if texts:
            (samples if path.is_file() else missing).append((path, texts))
    if missing:  # one line: a mistyped folder would otherwise give one per image of the file
        warn(f"skipping {len(missing)} image(s) listed in {json_path} but not found in "
             f"{image_dir}" + (f": {missing[0][0].name}" if len(missing) == 1
                               else f", {missing[0][0].name} the first"))
    if not samples:
        raise UserError(f"no captioned image of {json_path} was found in {image_dir}")
    require_some_readable([path for path, _ in samples], image_dir)
    return samples


class RightAngleRotation:
    """CATR's rotation: by 0, 90, 180 or 270 degrees, the canvas enlarged to keep every pixel."""

    def __call__(self, image):
        return image.rotate(random.choice((0, 90, 180, 270)), expand=True)


def train_transform(side, rotate=True, color_jitter=True, hflip=False):
    """CATR's training augmentation, each part optional, then its preprocessing (longer side
    ``side``, the model's config["input_size"]).

    Rotations and flips change which object is left of which, so captions that say where things
    are need them off; a flip also mirrors any text in the image.
    """
    steps = [RightAngleRotation()] if rotate else []
    steps.append(partial(resize_for_catr, side=side))
    if color_jitter:
        steps.append(transforms.ColorJitter(brightness=(0.5, 1.3), contrast=(0.8, 1.5),
                                            saturation=(0.2, 1.5)))
    if hflip:
        steps.append(transforms.RandomHorizontalFlip())
    steps.append(to_model_input)
    return transforms.Compose(steps)


def tokenize_captions(samples, tokenizer, max_len):
    """The captions of ``samples`` [(path, captions)] as token ids cut to ``max_len`` positions,
    [[ids of each caption] per image]: tokenised once for training, its vocabulary and the
    validation loss."""
    return [[tokenizer.encode(text)[:max_len] for text in texts] for _, texts in samples]


class CaptionPairs(ImageFileDataset):
    """One item per caption, as CATR trains: (image tensor, token ids), None if unreadable.
    ``token_ids``: tokenize_captions(samples, ...)."""

    def __init__(self, samples, token_ids, transform):
        pairs = [(path, ids) for (path, _), captions in zip(samples, token_ids) for ids in captions]
        super().__init__([path for path, _ in pairs], transform)
        self.token_ids = [ids for _, ids in pairs]

    def __getitem__(self, index):
        item = super().__getitem__(index)
        return None if item is None else (item[0], self.token_ids[index])


def caption_vocabulary(token_ids):
    """Sorted ids of the word pieces that captions (tokenize_captions) ask a model to produce;
    [SEP] always."""
    ids = {END_ID}
    for captions in token_ids:
        for caption in captions:
            ids.update(caption[1:])
    ids.discard(PAD_ID)
    return sorted(ids)


def pad_tokens(token_lists, device=None):
    """(B, L) ids padded with [PAD] to the longest, and the mask that is True on padding.

    Padding to the longest caption of the batch rather than to CATR's 128 positions gives the
    same logits at every real position: the causal mask keeps later positions out of them.
    """
    length = max(len(t) for t in token_lists)
    tokens = torch.full((len(token_lists), length), PAD_ID, dtype=torch.long, device=device)
    for i, ids in enumerate(token_lists):
        tokens[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return tokens, tokens == PAD_ID


def collate_pairs(batch):
    """(images, pixel mask, tokens, caption padding) of the readable items; None if none are."""
    batch = [item for item in batch if item is not None]
    if not batch:
        return None
    images, pixel_mask = pad_batch([image for image, _ in batch])
    return (images, pixel_mask, *pad_tokens([tokens for _, tokens in batch]))


# ---------------------------------------------------------------------------------------------
# Synthetic scenes

SCENE_SIZE = (256, 128)  # width, height: wide, so that three objects fit side by side
CAPTION_WORDS = ("a", "to", "the", "left", "of", *COLORS, *SHAPES)


def describe(objects):
    """The caption of a scene: its objects from left to right, e.g. "a red circle to the left of
    a blue square". Objects never share a column (see make_scene), so the order is unambiguous."""
    ordered = sorted(objects, key=lambda o: o.box[0])
    return " to the left of ".join(f"a {o.color} {o.shape}" for o in ordered)


def check_caption_words(tokenizer):
    """Raise UserError unless every caption word is one whole word piece of the vocabulary, so
    that each colour and shape word has exactly one attention map."""
    split = [w for w in CAPTION_WORDS if len(tokenizer.encode(w)) != 3]
    if split:
        raise UserError(f"caption words not in the vocabulary as whole words: {', '.join(split)}")


def make_scene(rng, size=SCENE_SIZE, max_objects=3, min_frac=0.35, max_frac=0.6):
    """(image, objects sorted left to right) of one to ``max_objects`` shapes.

    Objects occupy disjoint columns, so "left of" always holds for the whole object; sides are
    min_frac..max_frac of the shorter image side.
    """
    width, height = size
    while True:
        count = int(rng.integers(1, max_objects + 1))
        boxes = []
        for _ in range(count):
            columns = [(b[0], 0, b[2], height) for b in boxes]
            box = random_box(size, rng, min_frac, max_frac, avoid=columns)
            if any(box[0] < b[2] and b[0] < box[2] for b in boxes):
                break  # random_box gave up: this many objects of these sizes did not fit
            boxes.append(box)
        else:
            break
    objects = [(SHAPES[int(rng.integers(len(SHAPES)))],
                list(COLORS)[int(rng.integers(len(COLORS)))], box)
               for box in sorted(boxes)]
    return render_scene(size, objects, rng)


def make_scene_set(out_dir, count, seed=0, start_id=0, size=SCENE_SIZE, masks=False):
    """Write ``count`` synthetic scenes with their captions and boxes, and masks if asked.

    out_dir/images/scene_<id>.png   the images (only images: hw3_2.sh can caption the folder)
    out_dir/captions.json           COCO format, one caption per image (describe())
    out_dir/scenes.json             {file name: [{"shape", "color", "box": [x0, y0, x1, y1]}]},
                                    objects left to right, x1 and y1 exclusive
    out_dir/masks/scene_<id>.png    with ``masks``: 8-bit label map, k on the pixels of the k-th
                                    object (1-based)
    """
    from p2.tokenizer import CaptionTokenizer

    check_caption_words(CaptionTokenizer())
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    if masks:
        (out_dir / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations, scenes = [], [], {}
    for i in range(count):
        image_id = start_id + i
        name = f"scene_{image_id:06d}.png"
        image, objects = make_scene(rng, size)
        image.save(out_dir / "images" / name)
        if masks:
            labels = np.zeros((size[1], size[0]), dtype=np.uint8)
            for k, obj in enumerate(objects, 1):
                labels[obj.mask] = k
            Image.fromarray(labels, "L").save(out_dir / "masks" / name)
        images.append({"id": image_id, "file_name": name})
        annotations.append({"id": image_id, "image_id": image_id, "caption": describe(objects)})
        scenes[name] = [{"shape": o.shape, "color": o.color, "box": list(o.box)} for o in objects]
    write_text_atomic(out_dir / "captions.json",
                      json.dumps({"images": images, "annotations": annotations}) + "\n")
    write_text_atomic(out_dir / "scenes.json", json.dumps(scenes) + "\n")
    return scenes


def load_masks(folder, name):
    """Object masks of scene ``name`` in a make_scene_set folder: (objects, height, width) bool."""
    with Image.open(Path(folder) / "masks" / name) as labels:
        labels = np.asarray(labels)
    return np.stack([labels == k for k in range(1, int(labels.max()) + 1)])

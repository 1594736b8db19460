"""CATR's configuration, the starting points that --config names, and the recipe that trains the
small one on synthetic scenes.

Apart from the model and the engine, which import torch, so that train.py's --help and its
argument errors, and the demo's, come at once rather than after seconds of imports.
"""
# The configuration of all released CATR checkpoints (v1, v2, v3).
CATR_CONFIG = {
    "backbone": "resnet101",
    "dilation": True,
    "hidden_dim": 256,
    "nheads": 8,
    "enc_layers": 6,
    "dec_layers": 6,
    "dim_feedforward": 2048,
    "dropout": 0.1,
    "pre_norm": True,
    "vocab_size": 30522,
    "pad_token_id": 0,
    "max_position_embeddings": 128,
    "layer_norm_eps": 1e-12,
    # Not CATR options but fixed in its code; smaller configs trained from scratch change them.
    "input_size": 299,  # the longer image side after resizing
    "backbone_layer": "layer4",  # the last ResNet stage kept: layer2 has stride 8, layer3 16
    "backbone_norm": "frozen",  # frozen batch norm, or "batch" for a backbone trained from scratch
    # The token ids the head scores (sorted); the rest get -inf. None: the whole vocabulary.
    "output_tokens": None,
}
# the options that describe an architecture: a new model's, refused beside --init's checkpoint
ARCHITECTURE_OPTIONS = ("backbone", "dilation", "backbone_layer", "backbone_norm", "input_size",
                        "hidden_dim", "nheads", "enc_layers", "dec_layers", "dim_feedforward")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
BACKBONE_LAYERS = ("layer2", "layer3", "layer4")  # strides 8, 16, 32

# Starting points for --config; options such as --hidden-dim change them further. "small" trains
# from scratch on a CPU: ResNet-18 cut after layer2 (stride 8, so that a word's map can single out
# part of a small object) with trainable batch norm, on images whose longer side is 128 pixels.
CONFIGS = {
    "catr": {},
    "small": dict(backbone="resnet18", dilation=False, backbone_layer="layer2",
                  backbone_norm="batch", input_size=128, hidden_dim=128, nheads=4, enc_layers=2,
                  dec_layers=3, dim_feedforward=512),
}
# The options that train "small" on p2.data's synthetic scenes (the demo and bench/p2_attention.py
# add data, --epochs and --out). From scratch the backbone learns at the transformer's rate, after a
# warm-up; "left of" captions rule out rotation and colour words rule out colour jitter.
SCENE_RECIPE = ("--config", "small", "--output-vocab", "captions", "--batch-size", "16",
                "--lr", "1e-3", "--lr-backbone", "1e-3", "--schedule", "cosine", "--warmup", "50",
                "--clip-grad", "1.0", "--dropout", "0", "--no-rotate", "--no-color-jitter",
                "--max-len", "32")

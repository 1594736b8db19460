"""What several test files share: photos of three shapes, a small, fast CATR variant, and a
stand-in for recording CUDA graphs."""
import torch
from PIL import Image
from skimage import data

from p2.model import build_model
from p2.tokenizer import END_ID

# the real vocabulary (the tokenizer's), everything else small; stride 32 without dilation
SMALL_CONFIG = dict(backbone="resnet18", dilation=False, hidden_dim=64, nheads=4, enc_layers=2,
                    dec_layers=2, dim_feedforward=128)


def sample_photos():
    """{name: PIL image}: a wide, a tall and a square crop of scikit-image's sample photos."""
    cat = Image.fromarray(data.chelsea())
    astronaut = Image.fromarray(data.astronaut())
    coffee = Image.fromarray(data.coffee())
    return {"wide": cat.crop((0, 60, 451, 180)), "tall": astronaut.crop((150, 0, 300, 512)),
            "square": coffee.crop((100, 0, 500, 400))}


def small_model(seed=0, end_bias=None):
    """A randomly initialised small captioner; ``end_bias`` added to [SEP]'s logit makes it stop."""
    torch.manual_seed(seed)
    model = build_model(SMALL_CONFIG)
    if end_bias is not None:
        with torch.no_grad():
            model.mlp.layers[-1].bias[END_ID] += end_bias
    return model


class StandInRecorder:
    """What _as_cuda_graph does, without CUDA: a warm-up step, reset, then a 'replay' that runs
    the recorded step again on its own buffers; or it fails as a kernel that cannot be captured."""

    def __init__(self, fail=False):
        self.recorded, self.fail = 0, fail
        self.autocast = []  # (enabled, dtype, cache enabled) at each recording

    def __call__(self, step, reset):
        self.autocast.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                              torch.is_autocast_cache_enabled()))
        step()
        reset()
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing\nmore")
        self.recorded += 1
        return step

"""bench/p2_speed.py's check of the CUDA path against the eager one, run on a CPU with a
stand-in for graph recording (the GPU run gets one try: a crash there costs it)."""
from PIL import ImageOps

from bench import p2_speed
from bench.tables import RENDERERS
from p2.data import preprocess
from p2.model import build_model
from tests.p2.p2_samples import SMALL_CONFIG, StandInRecorder, sample_photos


def test_graphs_and_default_kernels_are_each_compared_with_their_reference():
    import torch

    torch.manual_seed(0)
    model = build_model(SMALL_CONFIG).eval()
    photos = sample_photos()
    images = [preprocess(photo, 128) for photo in (photos["wide"], ImageOps.mirror(photos["wide"]),
                                                   photos["square"])]
    recorder = StandInRecorder()
    found = p2_speed.graphs_against_eager(model, images, torch.device("cpu"), max_len=6,
                                          record=recorder)
    assert recorder.recorded > 0  # the graphed path ran, not the eager one twice
    for precision in ("fp32", "bf16"):
        for c in (found[precision], found[precision]["default_kernels_against_math"]):
            assert c["captions"] == 3 and 0 <= c["identical"] <= 3
    # in fp32 the stand-in's replay and torch's CPU attention kernels give the same captions
    assert found["fp32"]["identical"] == 3
    assert found["fp32"]["default_kernels_against_math"]["identical"] == 3
    assert found["fp32"]["default_kernels_against_math"]["max_row_difference"] < 1e-5
    rows = RENDERERS["p2_decoding_parts"]({"graphs_against_eager": found, "decoder_path": "x",
                                           "caption_steps": 13})
    assert sum("against its math kernel" in row for row in rows) == 2

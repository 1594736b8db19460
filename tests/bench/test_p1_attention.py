"""How bench/p1_attention.py scores a [CLS] map against the object's box."""
import numpy as np
import pytest

from bench.p1_attention import score_map


def test_score_map_weighs_cells_by_their_area_in_the_box_and_gives_each_rule_its_chance():
    # a 20 x 80 image in 2 x 4 cells 10 high and 20 wide; the box spans x 0..30, y 0..10: cell
    # (0, 0) whole, half of cell (0, 1), whose centre (x 30) lies on the box's exclusive edge
    heat = np.zeros((2, 4))
    heat[0, 1], heat[1, 3] = 3.0, 1.0
    scores = score_map(heat, (20, 80), (0, 0, 30, 10))
    assert scores["hit"] == 1.0 and scores["centre_hit"] == 0.0
    assert scores["hit_chance"] == pytest.approx(2 / 8)
    assert scores["centre_chance"] == pytest.approx(1 / 8)
    # mass in the box: half of 3 out of 4; the box holds 300 of 1,600 pixels
    assert scores["mass_ratio"] == pytest.approx((1.5 / 4) / (300 / 1600))


def test_score_map_gives_a_flat_map_a_mass_ratio_of_one():
    scores = score_map(np.ones((3, 5)), (30, 50), (7, 4, 33, 21))
    assert scores["mass_ratio"] == pytest.approx(1.0)

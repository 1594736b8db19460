"""The pointing rules' geometry that both attention benchmarks judge their maps by."""
import numpy as np

from bench.measure import cell_geometry


def test_cell_geometry_gives_overlap_centre_and_distance_of_each_cell():
    # 2 x 3 cells of 10 x 10 pixels; the box spans x 2..12, y 3..8 (ends exclusive)
    area, inside, distance = cell_geometry((2, 3), (10, 10), (2, 3, 12, 8))
    np.testing.assert_array_equal(area, [[40, 10, 0], [0, 0, 0]])
    np.testing.assert_array_equal(inside, [[True, False, False], [False, False, False]])
    np.testing.assert_allclose(distance, [[0, 3, 13], [7, np.hypot(7, 3), np.hypot(7, 13)]])


def test_cell_geometry_handles_non_square_cells_of_a_resized_image():
    # a 256 x 128 scene seen through an 8 x 16 grid: cells of 16 x 16 original pixels; with
    # cells of 16 x 32 the same box is covered by half as many columns
    box = (40, 20, 72, 52)
    square, _, _ = cell_geometry((8, 16), (16, 16), box)
    wide, _, _ = cell_geometry((8, 8), (16, 32), box)
    assert square.sum() == wide.sum() == 32 * 32
    assert (square > 0).sum() == 3 * 3 and (wide > 0).sum() == 3 * 2

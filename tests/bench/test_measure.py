"""The pointing rules' geometry that both attention benchmarks judge their maps by."""
import numpy as np

from bench.measure import cell_geometry


def test_cell_geometry_gives_overlap_centre_and_distance_of_each_cell():
    # 2 x 3 cells of 10 x 10 pixels; the box spans x 2..12, y 3..8 (ends exclusive)
    area, inside, distance = cell_geometry((2, 3), (10, 10), (2, 3, 12, 8))
    np.testing.assert_array_equal(area, [[40, 10, 0], [0, 0, 0]])
    np.testing.assert_array_equal(inside, [[True, False, False], [False, False, False]])
    np.testing.assert_allclose(distance, [[0, 3, 13], [7, np.hypot(7, 3), np.hypot(7, 13)]])


def test_cell_geometry_keeps_height_and_width_apart_for_non_square_cells():
    # cells 10 high and 20 wide; the box spans x 25..45, y 5..15: columns 1 and 2, rows 0 and 1
    area, inside, distance = cell_geometry((2, 3), (10, 20), (25, 5, 45, 15))
    np.testing.assert_array_equal(area, [[0, 75, 25], [0, 75, 25]])
    np.testing.assert_array_equal(inside, [[False, True, False], [False, False, False]])
    # centres at y 5, 15 and x 10, 30, 50: 15 px left of the box, inside it, 5 px right of it
    np.testing.assert_allclose(distance, [[15, 0, 5], [15, 0, 5]])

"""Pictures: image grids (at most 100, titled), one PNG per sample, pairwise scatter panels."""

import numpy as np
import pytest
from PIL import Image

from dmmd.evaluation.plotting import (
    MAX_GRID,
    pairwise_figure,
    save_image_grid,
    save_png_folder,
    save_samples_picture,
    to_uint8,
)


def test_to_uint8_maps_minus_one_to_one_onto_bytes():
    x = np.array([-1.5, -1.0, 0.0, 0.5, 1.0, 2.0], dtype=np.float32).reshape(1, 1, 1, 6)
    expected = np.clip(np.round((x.astype(np.float64) + 1) / 2 * 255), 0, 255)  # float64 reference
    np.testing.assert_array_equal(to_uint8(x).reshape(-1), expected.reshape(-1))


def test_grid_shows_at_most_100_images_under_a_title(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(150, 1, 8, 8)).astype(np.float32)
    save_image_grid(tmp_path / "g.png", images, title="dmmd, approx sampler, NFE 100, seed 0")
    save_image_grid(tmp_path / "plain.png", images[:MAX_GRID])
    with Image.open(tmp_path / "g.png") as titled, Image.open(tmp_path / "plain.png") as plain:
        grid = np.asarray(plain)
        page = np.asarray(titled)
    side = (10 * (8 + 1) + 1) * 4  # 10 x 10 tiles of 8 px with 1 px padding, scaled to 32 px a tile
    assert grid.shape == (side, side)
    assert page.shape[0] == side + 18 and (page[:18] < 128).any()  # the title strip has text in it
    np.testing.assert_array_equal(page[18:, :side], grid)  # the 150-image grid is the first 100's


def test_png_folder_has_one_file_per_image(tmp_path):
    rgb = np.linspace(-1, 1, 3 * 4 * 5 * 2, dtype=np.float32).reshape(2, 3, 4, 5)
    paths = save_png_folder(tmp_path / "png", rgb)
    assert [p.name for p in paths] == ["000000.png", "000001.png"]
    with Image.open(paths[1]) as img:
        assert img.mode == "RGB" and img.size == (5, 4)
        np.testing.assert_array_equal(np.asarray(img), to_uint8(rgb)[1])
    with pytest.raises(ValueError, match="shape"):
        save_png_folder(tmp_path / "bad", np.zeros((2, 2, 4, 4), dtype=np.float32))


@pytest.mark.parametrize("dim, shown", [(3, 3), (5, 4)])
def test_pairwise_panels_plot_every_pair_of_coordinates(dim, shown):
    import matplotlib.pyplot as plt

    points = np.random.default_rng(1).normal(size=(50, dim))
    fig = pairwise_figure(points, title="t")
    try:
        axes = np.array(fig.axes).reshape(shown, shown)
        for i in range(shown):
            for j in range(shown):
                drawn = axes[i, j].collections
                if i > j:  # panel (i, j): coordinate j across, coordinate i up
                    (scatter,) = drawn
                    np.testing.assert_allclose(scatter.get_offsets(), points[:, [j, i]])
                else:
                    assert not drawn
        assert (f"of {dim}" in fig._suptitle.get_text()) == (dim > shown)
    finally:
        plt.close(fig)


def test_samples_picture_of_more_than_two_coordinates_is_pairwise(tmp_path):
    points = np.random.default_rng(2).normal(size=(40, 3)).astype(np.float32)
    save_samples_picture(tmp_path / "p.png", points, "points", reference=points + 1, title="3-D")
    with Image.open(tmp_path / "p.png") as img:
        width, height = img.size
    assert abs(width - height) < 0.2 * width and width > 400  # a square 3 x 3 panel layout, not one scatter


def test_png_folder_holds_exactly_the_new_set(tmp_path):
    from dmmd.evaluation.plotting import save_png_folder

    images = np.zeros((10, 1, 4, 4), dtype=np.float32)
    save_png_folder(tmp_path, images)
    (tmp_path / "notes.txt").write_text("mine")
    save_png_folder(tmp_path, images[:4])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i:06d}.png" for i in range(4)] + ["notes.txt"]

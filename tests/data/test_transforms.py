"""LSJ geometry: one draw moves the image, the ground truth and the proposals together, straight to the
classifier's input size and mask grid."""
import numpy as np

from pipeline.data.transforms import Window, crop_image, draw_lsj, eval_resize_shape, sample_labels


def _scene(h=40, w=60):
    image = np.zeros((h, w, 3), np.uint8)
    image[10:20, 30:50] = 255
    ids = np.zeros((h, w), np.int64)
    ids[10:20, 30:50] = 7
    props = np.zeros((2, h, w), bool)
    props[0, 10:20, 30:50] = True
    return image, ids, props


def test_lsj_moves_image_ground_truth_and_proposals_together():
    image, ids, props = _scene()
    rng = np.random.default_rng(0)
    for _ in range(20):
        win = draw_lsj(40, 60, 64, 0.5, 2.0, rng)
        img = crop_image(image, win, 64)
        idm = sample_labels(ids, win, 64, ids.shape)
        pr = sample_labels(props, win, 64, ids.shape)
        assert img.shape == (64, 64, 3) and idm.shape == (64, 64) and pr.shape == (2, 64, 64)
        white = img[..., 0] > 127
        assert ((idm == 7) == white).mean() > 0.95
        assert (pr[0] == (idm == 7)).all()
        assert set(np.unique(idm).tolist()) <= {0, 7}


def test_masks_may_come_from_a_lower_resolution_store():
    """A store that keeps masks at 1/4 resolution lands on the same cells as the full-resolution mask (up to the
    block edges)."""
    _, ids, props = _scene(80, 120)
    quarter = props.reshape(2, 20, 4, 30, 4).any(axis=(2, 4))
    win = Window(8.0, 4.0, 96.0, False)
    full = sample_labels(props, win, 24, (80, 120))
    low = sample_labels(quarter, win, 24, (80, 120))
    assert (full == low).mean() > 0.97


def test_scale_range_and_padding():
    """Small scales show the whole image in a corner and pad the rest (image 0, ids 0 = void); the window
    side follows s * min(crop / H, crop / W)."""
    rng = np.random.default_rng(1)
    sides = [draw_lsj(100, 200, 64, 0.1, 2.0, rng).side for _ in range(200)]
    assert 100 <= min(sides) < 110 and 1000 < max(sides) <= 2000  # 64 / (s * 0.32) for s in [0.1, 2]
    image = np.full((100, 200, 3), 200, np.uint8)
    win = Window(0.0, 0.0, 400.0, False)  # the image covers the top-left half x quarter
    img = crop_image(image, win, 64)
    assert img[:10, :30].min() == 200 and img[40:].max() == 0 and img[:, 40:].max() == 0
    ids = np.ones((100, 200), np.int64)
    grid = sample_labels(ids, win, 16, ids.shape)
    assert grid[:4, :8].all() and not grid[5:].any() and not grid[:, 9:].any()


def test_flip_mirrors_every_output():
    image, ids, _ = _scene()
    win = Window(0.0, 0.0, 60.0, False)
    flipped = Window(0.0, 0.0, 60.0, True)
    assert np.array_equal(crop_image(image, flipped, 32), crop_image(image, win, 32)[:, ::-1])
    assert np.array_equal(sample_labels(ids, flipped, 32, ids.shape), sample_labels(ids, win, 32, ids.shape)[:, ::-1])


def test_eval_resize_follows_short_and_long_side_limits():
    assert eval_resize_shape(480, 640, 800, 1333) == (800, 1067)
    assert eval_resize_shape(500, 2000, 800, 1333) == (333, 1333)

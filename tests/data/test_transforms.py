import numpy as np

from pipeline.data.transforms import apply_joint, eval_resize_shape, lsj_transform


def test_lsj_moves_image_ground_truth_and_proposals_together():
    h, w = 40, 60
    image = np.zeros((h, w, 3), np.uint8)
    image[10:20, 30:50] = 255
    ids = np.zeros((h, w), np.int64)
    ids[10:20, 30:50] = 7
    props = np.zeros((2, h, w), bool)
    props[0, 10:20, 30:50] = True
    t = lsj_transform(64, 0.5, 2.0)
    for _ in range(10):
        img, idm, pr = apply_joint(t, image, ids, props)
        assert img.shape == (3, 64, 64) and idm.shape == (64, 64) and pr.shape == (2, 64, 64)
        white = img[0] > 127
        assert ((idm == 7) == white).float().mean() > 0.97
        assert (pr[0] == (idm == 7)).float().mean() > 0.99
        assert set(idm.unique().tolist()) <= {0, 7}


def test_eval_resize_follows_short_and_long_side_limits():
    assert eval_resize_shape(480, 640, 800, 1333) == (800, 1067)
    assert eval_resize_shape(500, 2000, 800, 1333) == (333, 1333)

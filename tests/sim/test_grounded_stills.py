"""Grounded-pick stills against the simulator's segmentation: label maps that name exactly the drawn cubes,
a workspace crop that holds them, splits by seed, and loading errors that name the file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sim.grounded_pick import PALETTE, WORKSPACE_CROP
from sim.grounded_stills import (
    FORMAT,
    INDEX_NAME,
    STILLS_NAME,
    check_box,
    crop_resize,
    label_lut,
    label_map,
    load_grounded_stills,
    square_box,
)
from sim.maniskill_robot import CameraSpec, ManiSkillRobot
from sim.shapes_world.dataset import HELDOUT, TRAIN, split_of


@pytest.fixture(scope="module")
def robot(grounded_robot: ManiSkillRobot) -> ManiSkillRobot:
    return grounded_robot


@pytest.fixture(scope="module")
def train_set(robot: ManiSkillRobot, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 train seeds from seed 2 on (2, 3, 5: seed 4 is held out), one moved still each."""
    from sim.grounded_stills import write_grounded_stills

    out = tmp_path_factory.mktemp("grounded_stills")
    write_grounded_stills(out, 3, seed_start=2, split=TRAIN, size=64, moved_per_seed=1, steps_between=3,
                          robot=robot, command="test")
    return out


# ---- no simulator ------------------------------------------------------------------------------------


def test_the_workspace_crop_is_a_square_inside_the_default_frame():
    camera = CameraSpec()
    check_box(WORKSPACE_CROP, camera.width, camera.height)
    x0, y0, x1, y1 = WORKSPACE_CROP
    assert x1 - x0 == y1 - y0 > 0


def test_square_box_grows_the_shorter_side_and_stays_in_the_frame():
    assert square_box((10, 20, 30, 60), 0, 100, 100) == (0, 20, 40, 60)  # centred at 20, clamped at 0
    assert square_box((40, 40, 60, 50), 5, 100, 100) == (35, 30, 65, 60)
    assert square_box((0, 0, 100, 90), 8, 100, 100) == (0, 0, 100, 100)  # the whole frame
    with pytest.raises(ValueError, match="square"):
        check_box((0, 0, 10, 20), 100, 100)


def test_labels_are_one_plus_the_palette_index_and_resize_by_nearest():
    names = list(PALETTE)
    lut = label_lut({0: "table", 3: "cube_" + names[2], 5: "cube_" + names[0], 6: "panda_link0"})
    seg = np.array([[0, 3, 5, 6], [9, 3, 3, -1], [5, 5, 0, 0], [0, 0, 0, 0]])
    labels = label_map(seg, lut)
    np.testing.assert_array_equal(labels, [[0, 3, 1, 0], [0, 3, 3, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    small = crop_resize(labels, (0, 0, 4, 4), 2, nearest=True)
    assert set(np.unique(small)) <= set(np.unique(labels))
    rgb = crop_resize(np.full((4, 4, 3), 200, np.uint8), (0, 0, 4, 4), 2, nearest=False)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8 and (rgb == 200).all()


def test_loading_a_missing_or_foreign_set_names_the_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / INDEX_NAME)):
        load_grounded_stills(tmp_path)
    (tmp_path / INDEX_NAME).write_text(json.dumps({"format": "something.else/1"}))
    np.savez(tmp_path / STILLS_NAME, images=np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match=f"{tmp_path / INDEX_NAME}.*something.else"):
        load_grounded_stills(tmp_path)
    (tmp_path / INDEX_NAME).write_text(json.dumps({"format": FORMAT, "palette": list(PALETTE)}))
    with pytest.raises(ValueError, match=f"{tmp_path / STILLS_NAME}.*lacks"):
        load_grounded_stills(tmp_path / STILLS_NAME)


# ---- with the simulator ------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_cube_pixel_at_reset_is_inside_the_workspace_crop(robot: ManiSkillRobot):
    x0, y0, x1, y1 = WORKSPACE_CROP
    cube_ids = robot.segmentation_ids([f"cube_{c}" for c in PALETTE])
    for seed in range(200, 210):  # not the seeds WORKSPACE_CROP was measured on
        seg = robot.reset(seed=seed).cameras[robot.camera.name].segmentation
        assert seg.shape == (CameraSpec().height, CameraSpec().width)
        rows, cols = np.nonzero(np.isin(seg, cube_ids))
        assert len(rows) > 0
        assert x0 <= cols.min() and cols.max() < x1 and y0 <= rows.min() and rows.max() < y1, f"seed {seed}"


@pytest.mark.slow
def test_label_maps_hold_the_present_colours_and_the_target_is_visible_at_reset(train_set: Path):
    stills = load_grounded_stills(train_set)
    assert len(stills) == 6 and stills.images.shape == (6, 64, 64, 3) and stills.labels.shape == (6, 64, 64)
    assert stills.palette == list(PALETTE) and stills.crop == WORKSPACE_CROP and stills.size == 64
    np.testing.assert_array_equal(stills.seeds, [2, 2, 3, 3, 5, 5])
    np.testing.assert_array_equal(stills.steps, [0, 3] * 3)
    for i in range(len(stills)):
        present = np.flatnonzero(stills.present[i])
        assert len(present) == 3 and stills.target[i] in present
        values = set(np.unique(stills.labels[i]).tolist())
        assert values <= {0, *(present + 1).tolist()}
        if stills.steps[i] == 0:  # nothing hides a cube at reset
            assert values == {0, *(present + 1).tolist()}
            assert (stills.labels[i] == stills.target[i] + 1).sum() > 0


@pytest.mark.slow
def test_a_train_file_holds_no_held_out_seed(train_set: Path):
    stills = load_grounded_stills(train_set)
    index = json.loads((train_set / INDEX_NAME).read_text())
    assert index["format"] == FORMAT and index["split"] == TRAIN and index["seeds"] == [2, 3, 5]
    assert index["crop"] == list(WORKSPACE_CROP) and index["command"] == "test"
    assert all(split_of(int(s)) == TRAIN for s in stills.seeds) and 4 not in stills.seeds
    assert HELDOUT not in {split_of(int(s)) for s in index["seeds"]}
    assert not list(train_set.glob("*.partial"))

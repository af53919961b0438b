import numpy as np
import pytest

from robot.safety import ACTION_SCALE_M, HARD_LIMITS, enforce


def test_safe_actions_pass_unchanged():
    action = np.array([0.1, -0.1, 0.05, 0.2, 0.0, -0.1, 1.0], np.float32)
    result = enforce(action, np.array([0.3, 0.0, 0.2]), HARD_LIMITS, 1.0)
    assert not result.rejected and result.clamps == []
    np.testing.assert_allclose(result.action, action, atol=1e-6)


def test_large_steps_are_scaled_to_the_limit():
    result = enforce(np.array([1, 1, 0, 1, 1, 1, 0.5]), np.array([0.3, 0.0, 0.2]), HARD_LIMITS, 1.0)
    assert set(result.clamps) == {"max_step_m", "max_step_rad"}
    assert np.linalg.norm(result.action[:3] * ACTION_SCALE_M) == pytest.approx(HARD_LIMITS.max_step_m)


def test_the_workspace_wall_stops_motion_and_lets_the_arm_back_in():
    at_floor = np.array([0.3, 0.0, HARD_LIMITS.workspace_low[2]])
    down = enforce(np.array([0, 0, -0.3, 0, 0, 0, 1.0]), at_floor, HARD_LIMITS, 1.0)
    assert "workspace" in down.clamps and down.action[2] == pytest.approx(0.0)
    below = at_floor - [0, 0, 0.02]  # pushed out: only moves that go back in are allowed
    result = enforce(np.array([0, 0, -0.3, 0, 0, 0, 1.0]), below, HARD_LIMITS, 1.0)
    assert result.action[2] > 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_actions_become_holds(bad):
    result = enforce(np.array([0.1, bad, 0, 0, 0, 0, -1.0]), np.array([0.3, 0.0, 0.2]), HARD_LIMITS, -1.0)
    assert "non-finite" in result.rejected
    np.testing.assert_array_equal(result.action, [0, 0, 0, 0, 0, 0, -1.0])  # still, gripper kept closed


def test_gripper_is_clamped_and_limits_only_narrow():
    assert enforce(np.array([0, 0, 0, 0, 0, 0, 3.0]), np.array([0.3, 0, 0.2]), HARD_LIMITS, 1.0).clamps == ["gripper"]
    tight = HARD_LIMITS.narrowed(max_step_m=0.01)
    assert tight.max_step_m == 0.01
    with pytest.raises(ValueError, match="looser"):
        HARD_LIMITS.narrowed(max_step_m=1.0)
    with pytest.raises(ValueError, match="looser"):
        HARD_LIMITS.narrowed(workspace_low=(-5.0, -5.0, -5.0))

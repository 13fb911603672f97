"""Cameras against the official tensors (../shared/reference/golden/cameras.*) and closed forms."""

import math

import pytest
import torch
from torch.testing import assert_close

from gen3d import cameras as C
from conftest import GOLDEN, load_golden

ATOL = 1e-6  # golden README: an independent float64 recomputation differs by <= 2.4e-7


@pytest.fixture(scope="module")
def golden():
    return load_golden("cameras")


def all_36(size=256):
    """The official 36-view order: 4 target views, then the 32 output views."""
    return C.file_cameras(C.TARGET_FILES + C.OUTPUT_FILES, size)


def test_ring_poses_equal_the_pose_files(golden):
    for i in C.OUTPUT_FILES:
        assert_close(C.ring_file_pose(i), C.read_pose_file(GOLDEN / "cam_poses" / f"132_{i}_RT.txt"), atol=1e-7, rtol=0)
    assert_close(C.ring_file_pose(list(C.TARGET_FILES + C.OUTPUT_FILES)), golden["c2w_blender_all"], atol=1e-7, rtol=0)


def test_world_change_and_relative_transform(golden):
    assert_close(C.BLENDER_TO_GL, golden["blender2opengl"], atol=0, rtol=0)
    assert_close(C.relative_transform(C.reference_pose()), golden["relative_transform"], atol=ATOL, rtol=0)


def test_relative_opengl_and_opencv_poses(golden):
    cams = all_36()
    assert_close(cams.c2w_gl, golden["c2w_opengl_all"], atol=ATOL, rtol=0)
    assert_close(cams.c2w_cv(), golden["c2w_opencv_all"], atol=ATOL, rtol=0)
    assert_close(C.cv_to_gl(cams.c2w_cv()), cams.c2w_gl, atol=0, rtol=0)


def test_rasterizer_inputs(golden):
    assert_close(C.projection_matrix(), golden["proj_matrix"], atol=ATOL, rtol=0)
    for cams, which in ((C.target_cameras(512), "input"), (C.output_cameras(512), "output")):
        assert_close(cams.view_matrix(), golden[f"cam_view_{which}"], atol=ATOL, rtol=0)
        assert_close(cams.view_proj_matrix(), golden[f"cam_view_proj_{which}"], atol=ATOL, rtol=0)
        assert_close(cams.official_campos(), golden[f"cam_pos_{which}"], atol=ATOL, rtol=0)


def test_from_w2c_cv_round_trip(golden):
    cams = C.Cameras.from_w2c_cv(golden["cam_view_input"].transpose(1, 2), width=64, height=64)
    assert_close(cams.c2w_gl, golden["c2w_opengl_all"][:4], atol=ATOL, rtol=0)


def test_unet_camera_vectors(golden):
    vec = C.unet_camera_vectors()
    assert vec.shape == (5, 16)
    assert_close(vec, golden["unet_camera_5x16"], atol=ATOL, rtol=0)
    assert_close(vec[:4], golden["unet_camera_4x16"], atol=ATOL, rtol=0)
    assert_close(torch.cat([vec, vec]), golden["unet_camera_cfg_10x16"], atol=ATOL, rtol=0)
    assert_close(vec[:4].reshape(4, 4, 4), golden["imagedream_cam_poses_gt"], atol=ATOL, rtol=0)


def test_plucker_rays(golden):
    rays = C.target_cameras(256).plucker()
    assert rays.shape == (4, 6, 256, 256) and rays.dtype == torch.float32
    idx = golden["plucker_target_f32_sub5_index"]
    assert_close(rays[:, :, idx][:, :, :, idx], golden["plucker_target_f32_sub5"], atol=ATOL, rtol=0)
    # float16 storage rounding <= 2.44e-4; a missing +0.5 pixel offset would be off by 2.7e-3
    assert_close(rays, golden["plucker_target_f16"].float(), atol=5e-4, rtol=0)
    zero_pose = torch.zeros(1, 4, 4)
    assert torch.equal(C.plucker_rays(zero_pose, 256, 256), golden["plucker_context_f16"].float())


def test_spec_numbers():
    assert math.isclose(1 / C.tan_half_fov(), 2.18923493, rel_tol=1e-8)
    assert math.isclose(C.focal_length(256), 280.222, abs_tol=1e-3)
    assert math.isclose(C.focal_length(512), 560.444, abs_tol=1e-3)
    rays = C.target_cameras(256).plucker()
    expected = torch.tensor([-0.573942, -0.573942, 0.0, -0.382628, 0.382628, -0.840947])
    assert_close(rays[0, :, 0, 0], expected, atol=1e-6, rtol=0)
    assert_close(rays[0, 3:, 128, 128], torch.tensor([0.001784, -0.001784, -0.999997]), atol=1e-6, rtol=0)


def test_target_views_are_kiui_orbits():
    expected = C.orbit_camera(torch.zeros(4), torch.tensor([0.0, 90.0, 180.0, 270.0]), 1.5)
    assert_close(C.target_cameras().c2w_gl, expected, atol=ATOL, rtol=0)
    a90 = C.target_cameras().c2w_gl[1]
    assert_close(a90[:3, :3], torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]]), atol=ATOL, rtol=0)
    assert_close(a90[:3, 3], torch.tensor([1.5, 0, 0]), atol=ATOL, rtol=0)
    above = C.orbit_camera(-30.0, 0.0)
    assert above[1, 3] > 0  # kiui: negative elevation is above


def test_known_point_lands_on_known_pixel():
    # The origin projects to the image centre in every view; a point on +x is to the right in the front view.
    cams = C.target_cameras(256)
    uv, z = cams.project(torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.3, 0.0]]))
    assert_close(uv[:, 0], torch.full((4, 2), 128.0), atol=1e-4, rtol=0)
    assert_close(z[:, 0], torch.full((4,), 1.5), atol=1e-6, rtol=0)
    f = C.focal_length(256)
    assert_close(uv[0, 1], torch.tensor([128 + f * 0.3 / 1.5, 128.0]), atol=1e-3, rtol=0)
    assert_close(uv[0, 2], torch.tensor([128.0, 128 - f * 0.3 / 1.5]), atol=1e-3, rtol=0)  # +y is up: smaller row
    # in the azimuth-90 view the camera sits on +x, so a point on +x is nearer
    assert z[1, 1] < 1.5 - 0.29


def test_unproject_inverts_project():
    cams = C.target_cameras(32)
    depth = 1.0 + torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(0))
    points = cams.unproject(depth)  # [4, 32, 32, 3]
    centres = torch.stack(torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="xy"), -1)
    for v in range(4):
        uv, z = cams[v].project(points[v].reshape(-1, 3))
        assert_close(uv[0], centres.reshape(-1, 2).float(), atol=1e-4, rtol=0)
        assert_close(z[0], depth[v].reshape(-1), atol=1e-5, rtol=0)
    # the image centre at depth 1.5 is the world origin in every target view
    assert_close(cams.resized(2).unproject(torch.full((4, 2, 2), 1.5)).mean(dim=(1, 2)), torch.zeros(4, 3), atol=1e-6, rtol=0)


def test_tsdf_and_spiral_views():
    low, high = C.tsdf_cameras("low"), C.tsdf_cameras("high")
    assert len(low) == 24 and len(high) == 72 and low.width == 512
    for cams in (low, high, C.spiral_cameras(100)):
        assert_close(cams.centers().norm(dim=-1), torch.full((len(cams),), 1.5), atol=1e-5, rtol=0)
        uv, _ = cams.project(torch.zeros(1, 3))  # every camera looks at the origin
        assert_close(uv[:, 0], torch.full((len(cams), 2), cams.width / 2), atol=1e-3, rtol=0)
    heights = C.tsdf_cameras(72).centers()[:, 1]
    assert heights[0] < -1.0 and heights[-1] > 1.0  # from below to above


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\[V, 4, 4\]"):
        C.Cameras(c2w_gl=torch.eye(4))
    with pytest.raises(ValueError, match="100..131"):
        C.ring_file_pose(5)

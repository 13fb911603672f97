"""Gaussians: official activations, .ply/.splat round trips, pruning."""

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from gen3d.gaussians import (
    SH_C0, Gaussians, activate, load_ply, load_splat, random_gaussians, save_ply, save_splat,
)
from conftest import load_golden


def test_activation_reproduces_the_official_head():
    golden = load_golden("reconstructor_tiny")
    conv_out = golden["intermediates.conv_out"]  # [5, 14, 16, 16] before reshape and activation
    S = conv_out.shape[-1]
    raw = conv_out.reshape(1, 5, 14, S, S)[:, :4].permute(0, 1, 3, 4, 2).reshape(1, -1, 14)
    # the golden gaussians were activated from this very float32 map: only rounding separates them
    assert_close(activate(raw), golden["outputs.gaussians"], atol=2e-6, rtol=0)
    g = Gaussians.from_raw(raw)
    assert g.batch_shape == (1,) and len(g) == 4 * S * S
    assert_close(g.to_packed(), activate(raw), atol=0, rtol=0)
    assert_close(g[0].quats.norm(dim=-1), torch.ones(len(g)), atol=1e-6, rtol=0)


def test_field_shapes_are_checked():
    g = random_gaussians(10, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="opacities"):
        Gaussians(means=g.means, quats=g.quats, scales=g.scales, opacities=g.opacities[:5], colors=g.colors)
    with pytest.raises(ValueError, match="14"):
        activate(torch.zeros(3, 13))


def test_ply_round_trip_and_layout(tmp_path):
    from plyfile import PlyData

    g = random_gaussians(500, torch.Generator().manual_seed(1))
    path = save_ply(g, tmp_path / "gs.ply", min_opacity=0)
    ply = PlyData.read(str(path))
    names = [p.name for p in ply["vertex"].properties]
    assert names == ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                     "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert all(p.val_dtype == "f4" for p in ply["vertex"].properties)
    assert ply.byte_order == "<" and ply.text is False and len(ply.elements) == 1
    # stored values follow spec 11.1
    v = ply["vertex"]
    assert np.allclose(v["f_dc_0"], (g.colors[:, 0].numpy() - 0.5) / SH_C0, atol=1e-5)
    assert np.allclose(v["scale_1"], np.log(g.scales[:, 1].numpy() + 1e-8), atol=1e-5)
    back = load_ply(path)
    assert_close(back.means, g.means, atol=0, rtol=0)
    assert_close(back.colors, g.colors, atol=1e-6, rtol=0)
    assert_close(back.opacities, g.opacities, atol=1e-6, rtol=0)
    assert_close(back.scales, g.scales, atol=1e-7, rtol=1e-6)
    assert_close(back.quats, g.quats, atol=1e-6, rtol=0)


def test_ply_prunes_by_opacity(tmp_path):
    g = random_gaussians(200, torch.Generator().manual_seed(2))
    g.opacities[:50] = 0.001
    back = load_ply(save_ply(g, tmp_path / "gs.ply"))
    assert len(back) == 150
    assert len(g.prune(0.005)) == 150 and bool((g.prune(0.005).opacities >= 0.005).all())


def test_load_ply_rejects_other_files(tmp_path):
    bad = tmp_path / "mesh.ply"
    bad.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0\n")
    with pytest.raises(ValueError, match="missing properties"):
        load_ply(bad)
    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"\x00\x01 not a ply")
    with pytest.raises(ValueError, match="not a readable .ply"):
        load_ply(junk)


def test_splat_round_trip(tmp_path):
    g = random_gaussians(300, torch.Generator().manual_seed(3))
    path = save_splat(g, tmp_path / "gs.splat")
    assert path.stat().st_size == 32 * 300
    back = load_splat(path)
    # .splat is sorted by opacity x volume: match by position
    order = torch.cdist(back.means, g.means).argmin(dim=1)
    assert_close(back.means, g.means[order], atol=0, rtol=0)
    assert_close(back.scales, g.scales[order], atol=0, rtol=0)
    assert_close(back.colors, g.colors[order], atol=1 / 255, rtol=0)
    assert_close(back.opacities, g.opacities[order], atol=1 / 255, rtol=0)
    dots = (back.quats * g.quats[order]).sum(-1).abs()
    assert bool((dots > 0.99).all())
    importance = back.opacities * back.scales.prod(-1)
    assert bool((importance[:-1] >= importance[1:] - 1e-6).all())


def test_batch_indexing():
    g = random_gaussians(20, torch.Generator().manual_seed(4))
    batched = Gaussians.from_packed(torch.stack([g.to_packed(), g.to_packed() * 0.5]))
    assert batched.batch_shape == (2,)
    assert_close(batched[0].to_packed(), g.to_packed(), atol=0, rtol=0)
    with pytest.raises(IndexError):
        g[0]


def test_rotate_x_180_is_a_rigid_turn():
    from gen3d.cameras import Cameras, target_cameras
    from gen3d.gaussians import rotate_x_180
    from gen3d.render import render

    g = random_gaussians(300, torch.Generator().manual_seed(5))
    turned = rotate_x_180(g)
    assert_close(turned.means[:, 1], -g.means[:, 1], atol=0, rtol=0)
    assert_close(rotate_x_180(turned).means, g.means, atol=0, rtol=0)
    # seen by a camera turned the same way, the turned scene looks exactly like the original
    cams = target_cameras(48)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    a = render(g, cams, normals=False).color
    b = render(turned, Cameras(c2w_gl=flip @ cams.c2w_gl, width=48, height=48), normals=False).color
    assert_close(a, b, atol=1e-5, rtol=0)

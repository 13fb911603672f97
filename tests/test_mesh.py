"""Meshes from Gaussians (gen3d.mesh, gen3d.normal_refine, ``python -m gen3d mesh``).

Analytic scenes: a sphere and a box covered with dense small disc-shaped Gaussians (surfels tangent to
the surface), so the true shape, volume and colours are known. Small settings (24 views at 128², 128³
voxels: 9.4 mm voxels on a 0.7 m object) keep the file fast.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gen3d.gaussians import Gaussians, save_ply
from gen3d.mesh import MeshConfig, export_mesh, extract_mesh, load_mesh_colors
from gen3d.normal_refine import (GlobalGenerator, DepthRefiner, integrate_normals, load_normal_net,
                                 predict_normals)
from gen3d.weights import WeightsError

SMALL = dict(quality=24, resolution=128, render_size=128)
SPHERE_RADIUS = 0.35
BOX_HALF = (0.3, 0.2, 0.25)
BOX_COLORS = {0: (0.9, 0.2, 0.2), 1: (0.2, 0.8, 0.2), 2: (0.2, 0.3, 0.9)}  # faces normal to x, y, z (+ side)
TOP, BOTTOM = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9)  # sphere: y > 0 red, y < 0 blue


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run this module's renders on one thread: beside a busy process (the training job), torch's
    OpenMP threads wait for each other at every small op and take many times longer. Restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ scenes
def surfels(points: torch.Tensor, normals: torch.Tensor, colors: torch.Tensor, spacing: float,
            sigma: float = 0.6, opacity: float = 0.95) -> Gaussians:
    """Flat Gaussians (std sigma·spacing in the tangent plane, 2 mm along the normal)."""
    w = 1 + normals[:, 2]  # quaternion taking +z to the normal: (1 + n_z, -n_y, n_x, 0), normalised
    quats = torch.stack([w, -normals[:, 1], normals[:, 0], torch.zeros_like(w)], -1)
    quats[w < 1e-6] = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=quats.dtype)
    n = len(points)
    return Gaussians(means=points.float(), quats=F.normalize(quats.float(), dim=-1),
                     scales=torch.tensor([sigma * spacing, sigma * spacing, 0.002]).expand(n, 3).clone(),
                     opacities=torch.full((n,), opacity), colors=colors.float())


def sphere_scene(radius: float = SPHERE_RADIUS, n: int = 4000, centre=(0.0, 0.0, 0.0)) -> Gaussians:
    k = torch.arange(n, dtype=torch.float64) + 0.5  # Fibonacci sphere
    phi, theta = torch.acos(1 - 2 * k / n), math.pi * (1 + 5 ** 0.5) * k
    normals = torch.stack([phi.sin() * theta.cos(), phi.cos(), phi.sin() * theta.sin()], -1)
    colors = torch.where(normals[:, 1:2] > 0, torch.tensor(TOP, dtype=torch.float64),
                         torch.tensor(BOTTOM, dtype=torch.float64))
    points = radius * normals + torch.tensor(centre, dtype=torch.float64)
    return surfels(points, normals, colors, math.sqrt(4 * math.pi * radius ** 2 / n))


def box_scene(half=BOX_HALF, spacing: float = 0.02) -> Gaussians:
    """Faces sampled at cell centres; the + face of axis a has BOX_COLORS[a], the - face 0.6 of it."""
    half = torch.tensor(half, dtype=torch.float64)
    points, normals, colors = [], [], []
    for axis in range(3):
        a, b = [i for i in range(3) if i != axis]
        na, nb = round(float(2 * half[a] / spacing)), round(float(2 * half[b] / spacing))
        ua = (torch.arange(na, dtype=torch.float64) + 0.5) * (2 * half[a] / na) - half[a]
        ub = (torch.arange(nb, dtype=torch.float64) + 0.5) * (2 * half[b] / nb) - half[b]
        grid_a, grid_b = torch.meshgrid(ua, ub, indexing="ij")
        for sign in (1.0, -1.0):
            p = torch.zeros(grid_a.numel(), 3, dtype=torch.float64)
            p[:, a], p[:, b], p[:, axis] = grid_a.reshape(-1), grid_b.reshape(-1), sign * half[axis]
            nrm = torch.zeros_like(p)
            nrm[:, axis] = sign
            col = torch.tensor(BOX_COLORS[axis], dtype=torch.float64) * (1.0 if sign > 0 else 0.6)
            points.append(p), normals.append(nrm), colors.append(col.expand(len(p), 3))
    return surfels(torch.cat(points), torch.cat(normals), torch.cat(colors), spacing, sigma=0.55, opacity=0.99)


@pytest.fixture(scope="module")
def sphere_mesh():
    return extract_mesh(sphere_scene(), **SMALL)


@pytest.fixture(scope="module")
def box_mesh():
    return extract_mesh(box_scene(), **SMALL)


# ------------------------------------------------------------------------------------------ geometry
def test_sphere_is_closed_with_the_right_volume_bounds_and_colours(sphere_mesh):
    mesh = sphere_mesh.mesh
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # faces wind outwards
    true_volume = 4 / 3 * math.pi * SPHERE_RADIUS ** 3
    assert abs(mesh.volume / true_volume - 1) < 0.03, mesh.volume
    np.testing.assert_allclose(mesh.bounds, [[-SPHERE_RADIUS] * 3, [SPHERE_RADIUS] * 3], atol=0.03 * SPHERE_RADIUS)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radii - SPHERE_RADIUS).max() < 0.01  # every vertex within ~a voxel of the sphere
    colors = mesh.visual.vertex_colors[:, :3].astype(float) / 255
    top, bottom = mesh.vertices[:, 1] > 0.1, mesh.vertices[:, 1] < -0.1  # +y is up
    np.testing.assert_allclose(colors[top].mean(0), TOP, atol=0.03)
    np.testing.assert_allclose(colors[bottom].mean(0), BOTTOM, atol=0.03)
    assert sphere_mesh.seconds["total"] > 0 and not sphere_mesh.refined
    assert any("refinement skipped" in note for note in sphere_mesh.notes)


def test_box_is_closed_with_the_right_volume_bounds_and_face_colours(box_mesh):
    mesh = box_mesh.mesh
    assert mesh.is_watertight and mesh.volume > 0
    half = np.array(BOX_HALF)
    assert abs(mesh.volume / np.prod(2 * half) - 1) < 0.03, mesh.volume
    extent = mesh.bounds[1] - mesh.bounds[0]
    np.testing.assert_array_less(np.abs(extent / (2 * half) - 1), 0.05)
    np.testing.assert_allclose(mesh.bounds.mean(0), 0.0, atol=0.01)
    colors = mesh.visual.vertex_colors[:, :3].astype(float) / 255
    for axis, rgb in BOX_COLORS.items():
        others = [i for i in range(3) if i != axis]
        central = (np.abs(mesh.vertices[:, others]) < 0.6 * half[others]).all(1)  # away from edges
        for sign, scale in ((1, 1.0), (-1, 0.6)):
            face = central & (sign * mesh.vertices[:, axis] > half[axis] - 0.01)
            assert face.sum() > 20
            np.testing.assert_allclose(colors[face].mean(0), np.array(rgb) * scale, atol=0.04)


def test_small_floating_components_are_dropped():
    scene = sphere_scene()
    floater = sphere_scene(radius=0.03, n=60, centre=(0.45, 0.45, 0.0))
    both = Gaussians(**{name: torch.cat([getattr(scene, name), getattr(floater, name)])
                        for name in ("means", "quats", "scales", "opacities", "colors")})
    result = extract_mesh(both, quality=24, resolution=96, render_size=128)
    assert len(result.mesh.split(only_watertight=False)) == 1
    assert result.mesh.vertices[:, 0].max() < SPHERE_RADIUS + 0.02  # the floater at x = 0.45 is gone
    assert any("small component" in note for note in result.notes)


def test_decimation_meets_the_face_budget_and_keeps_colours():
    result = extract_mesh(sphere_scene(), quality=24, resolution=96, render_size=128, max_faces=4000)
    mesh = result.mesh
    assert len(mesh.faces) <= 4000 and len(mesh.faces) > 3000
    assert abs(mesh.volume / (4 / 3 * math.pi * SPHERE_RADIUS ** 3) - 1) < 0.05
    colors = mesh.visual.vertex_colors[:, :3].astype(float) / 255
    np.testing.assert_allclose(colors[mesh.vertices[:, 1] > 0.1].mean(0), TOP, atol=0.05)
    assert "decimate" in result.seconds


def test_no_surface_and_bad_inputs_raise():
    empty = sphere_scene()
    empty.opacities = torch.full_like(empty.opacities, 0.001)  # alpha never reaches 0.5
    with pytest.raises(ValueError, match="no surface"):
        extract_mesh(empty, quality=4, resolution=32, render_size=32)
    with pytest.raises(ValueError, match="unbatched"):
        extract_mesh(Gaussians(**{k: v[None] for k, v in vars(sphere_scene(n=10)).items()}))
    with pytest.raises(ValueError, match="quality"):
        MeshConfig.from_quality("medium")


def test_quality_presets():
    assert MeshConfig.from_quality("low").views == 24 and MeshConfig.from_quality("high").views == 72
    high = MeshConfig.from_quality("high")
    assert (high.render_size, high.resolution) == (512, 512)  # official render size
    assert MeshConfig.from_quality("12").views == 12 and MeshConfig.from_quality(36, resolution=64).resolution == 64


# -------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("suffix", [".glb", ".obj", ".ply"])
def test_export_reloads_with_vertex_colours(sphere_mesh, tmp_path, suffix):
    path = export_mesh(sphere_mesh, tmp_path / f"mesh{suffix}")
    vertices, faces, colors = load_mesh_colors(path)
    mesh = sphere_mesh.mesh
    assert len(faces) == len(mesh.faces)
    np.testing.assert_allclose(np.sort(vertices, axis=0), np.sort(mesh.vertices, axis=0), atol=1e-5)
    # same frame (no axis swap on the way): the red half is still at +y
    top = vertices[:, 1] > 0.1
    np.testing.assert_allclose(colors[top, :3].mean(0) / 255, TOP, atol=0.03)
    assert colors.dtype == np.uint8 and (colors[:, 3] == 255).all()


def test_glb_has_color_0_and_a_non_metallic_material(sphere_mesh, tmp_path):
    path = export_mesh(sphere_mesh, tmp_path / "mesh.glb")
    data = path.read_bytes()
    header = json.loads(data[20: 20 + int.from_bytes(data[12:16], "little")])
    primitive = header["meshes"][0]["primitives"][0]
    assert "COLOR_0" in primitive["attributes"] and "NORMAL" in primitive["attributes"]
    accessor = header["accessors"][primitive["attributes"]["COLOR_0"]]
    assert accessor["componentType"] == 5121 and accessor["normalized"] and accessor["type"] == "VEC4"
    material = header["materials"][primitive["material"]]["pbrMetallicRoughness"]
    assert material["metallicFactor"] == 0.0  # glTF's default material is fully metallic (dark)
    with pytest.raises(ValueError, match="glb"):
        export_mesh(sphere_mesh, tmp_path / "mesh.stl")


def test_box_front_faces_plus_z_and_top_is_plus_y(box_mesh, tmp_path):
    """glTF: +y up, the front faces +z (a viewer's default camera). The input view looks at the
    Gaussians from +z, so the box's +z face (blue) must be the mesh's +z side in the reloaded .glb."""
    vertices, _, colors = load_mesh_colors(export_mesh(box_mesh, tmp_path / "box.glb"))
    front = vertices[:, 2] > BOX_HALF[2] - 0.01
    top = vertices[:, 1] > BOX_HALF[1] - 0.01
    assert colors[front, 2].mean() > 200 and colors[top, 1].mean() > 170


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_mesh_on_a_ply_and_on_a_result_folder(tmp_path, capsys):
    from gen3d.cli import main

    ply = save_ply(box_scene(), tmp_path / "box.ply")
    rc = main(["mesh", str(ply), "--quality", "12", "--resolution", "64", "--render-size", "96",
               "--formats", "glb,obj,ply", "--device", "cpu"])
    assert rc == 0
    for suffix in (".glb", ".obj", ".ply"):
        vertices, faces, colors = load_mesh_colors(tmp_path / f"box_mesh{suffix}")
        assert len(faces) > 1000 and colors.shape == (len(vertices), 4)
    summary = json.loads((tmp_path / "box_mesh.json").read_text())
    assert summary["watertight"] and summary["config"]["views"] == 12 and summary["config"]["resolution"] == 64

    result_dir = tmp_path / "result"
    save_ply(box_scene(), result_dir / "gs.ply")
    assert main(["mesh", str(result_dir), "--quality", "8", "--resolution", "48", "--render-size", "64"]) == 0
    assert (result_dir / "mesh.glb").is_file() and (result_dir / "mesh.json").is_file()
    assert "faces" in capsys.readouterr().out

    assert main(["mesh", str(tmp_path / "missing.ply"), "--quality", "4"]) == 1
    with pytest.raises(SystemExit):
        main(["mesh", str(ply), "--quality", "medium"])


def test_infer_with_mesh_writes_a_glb(tmp_path):
    from conftest import IMAGES
    from gen3d.cli import main
    from gen3d.pipeline import tiny_pipeline

    folder = tiny_pipeline(seed=0).save_pretrained(tmp_path / "tiny")
    out = tmp_path / "out"
    args = ["infer", str(IMAGES / "objects" / "object_0.png"), "--out", str(out), "--preset", str(folder),
            "--steps", "1", "--turntable-frames", "2", "--device", "cpu", "--mesh", "--mesh-quality", "4"]
    assert main(args) == 0
    vertices, faces, colors = load_mesh_colors(out / "object_0" / "mesh.glb")
    assert len(faces) > 0 and colors.shape == (len(vertices), 4)
    assert json.loads((out / "object_0" / "mesh.json").read_text())["config"]["views"] == 4


# ------------------------------------------------------------------------------ normal refinement
def test_global_generator_keys_and_shapes():
    with torch.device("meta"):
        official = GlobalGenerator()  # 3 -> 3, ngf 64, 4 downsamplings, 9 residual blocks
    shapes = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    assert len(shapes) == 56  # conv weights and biases only: no norm parameters
    assert shapes["model.1.weight"] == (64, 3, 7, 7) and shapes["model.13.weight"] == (1024, 512, 3, 3)
    assert shapes["model.16.conv_block.1.weight"] == (1024, 1024, 3, 3)
    assert shapes["model.24.conv_block.5.weight"] == (1024, 1024, 3, 3)
    assert shapes["model.25.weight"] == (1024, 512, 3, 3)  # ConvTranspose2d: (in, out, k, k)
    assert shapes["model.38.weight"] == (3, 64, 7, 7)
    assert "model.2.weight" not in shapes and official.norm_prefixes()[0] == "model.2."

    small = GlobalGenerator(ngf=4, n_downsampling=2, n_blocks=1)
    out = small(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1


def test_load_normal_net_from_safetensors_and_refuse_pickles(tmp_path):
    from safetensors.torch import save_file

    arch = dict(ngf=4, n_downsampling=2, n_blocks=1)
    source = GlobalGenerator(**arch)
    state = {f"netG.netF.{k}": v for k, v in source.state_dict().items()}
    state["netG.netF.model.2.running_mean"] = torch.zeros(4)  # an official BatchNorm entry: ignored
    state["netG.netB.model.1.weight"] = torch.zeros(1)  # another PIFuHD sub-network: ignored
    save_file(state, str(tmp_path / "pifuhd_netF.safetensors"))
    net = load_normal_net(tmp_path / "pifuhd_netF.safetensors", **arch)
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(net(x), source.eval()(x))

    torch.save({"model_state_dict": source.state_dict()}, tmp_path / "pifuhd.pt")
    with pytest.raises(WeightsError, match="never unpickles.*safetensors"):
        load_normal_net(tmp_path / "pifuhd.pt", **arch)
    with pytest.raises(WeightsError, match="not found"):
        load_normal_net(tmp_path / "absent.safetensors")
    broken = dict(state)
    del broken["netG.netF.model.1.weight"]
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(WeightsError, match="missing"):
        load_normal_net(tmp_path / "broken.safetensors", **arch)


def test_predict_normals_maps_the_network_frame_to_opencv():
    net = GlobalGenerator(ngf=4, n_downsampling=2, n_blocks=1)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.model[-2].bias.copy_(torch.tensor([0.0, 0.0, 2.0]))  # tanh -> (0, 0, 0.96): facing the viewer
    mask = torch.zeros(2, 18, 18, dtype=torch.bool)
    mask[:, 5:15, 5:15] = True
    normals = predict_normals(net, torch.rand(2, 3, 18, 18), mask)  # padded to 20 (a multiple of 4) and back
    assert normals.shape == (2, 3, 18, 18)
    torch.testing.assert_close(normals[:, :, 9, 9], torch.tensor([[0.0, 0.0, -1.0]] * 2))  # OpenCV: towards the camera
    assert normals[:, :, 0, 0].abs().max() == 0


def sphere_cap(size: int = 48, focal: float = 60.0, radius: float = 0.5, distance: float = 1.5):
    """Exact depth and OpenCV normals of a sphere seen by a pinhole camera, and the visible cap."""
    rows, cols = np.mgrid[0:size, 0:size]
    c = size / 2
    d = np.stack([(cols + 0.5 - c) / focal, (rows + 0.5 - c) / focal, np.ones((size, size))], -1)
    centre = np.array([0.0, 0.0, distance])
    a, b, cc = (d * d).sum(-1), -2 * (d @ centre), centre @ centre - radius ** 2
    disc = b * b - 4 * a * cc
    t = (-b - np.sqrt(np.clip(disc, 0, None))) / (2 * a)  # z of the hit point (d_z = 1)
    normals = (t[..., None] * d - centre) / radius
    mask = (disc > 0) & (normals[..., 2] < -0.4)
    return np.where(mask, t, 0.0), normals, mask, focal, c


def test_normal_integration_recovers_depth_from_exact_normals(generator):
    depth, normals, mask, focal, c = sphere_cap()
    noise = torch.randn(depth.shape, generator=generator, dtype=torch.float64).numpy() * 0.01
    prior = np.where(mask, depth + noise, 0.0)
    refined = integrate_normals(normals, prior, mask, focal, focal, c, c)
    assert np.isnan(refined[~mask]).all() and np.isfinite(refined[mask]).all()
    error_prior = np.sqrt(((prior - depth)[mask] ** 2).mean())
    error_refined = np.sqrt(((refined - depth)[mask] ** 2).mean())
    assert error_refined < 0.3 * error_prior, (error_prior, error_refined)
    # with the normals flipped (the wrong convention) the result is worse than with the right one
    flipped = integrate_normals(normals * np.array([-1.0, -1.0, 1.0]), prior, mask, focal, focal, c, c, max_iter=20)
    assert np.sqrt(((flipped - depth)[mask] ** 2).mean()) > 2 * error_refined


def test_extract_mesh_with_a_depth_refiner():
    refiner = DepthRefiner(GlobalGenerator(ngf=4, n_downsampling=2, n_blocks=1).eval(), max_iter=3)
    result = extract_mesh(box_scene(), quality=6, resolution=48, render_size=64, normal_weights=refiner)
    assert result.refined and not any("skipped" in note for note in result.notes)
    assert len(result.mesh.faces) > 0

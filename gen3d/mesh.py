"""Meshes from Gaussians: render depth, fuse a TSDF, marching cubes, clean up, export (spec section 12).

``extract_mesh(gaussians, quality="low") -> MeshResult``; ``export_mesh(result, "mesh.glb")``.

1. Views: the official spiral of ``cameras.tsdf_cameras`` (three turns, elevation -45° -> 45°; 24 views
   for "low", 72 for "high", or a count), rendered with the official GOF rasterizer (spec 8.3) on the
   Gaussians' device, ``view_chunk`` views at a time: colour, alpha and the median depth.
   A pixel is a surface sample where alpha >= ``alpha_threshold`` (0.5: exactly where the median-depth
   rule found the Gaussian that takes the transmittance to 0.5) and free space elsewhere. (The official
   code fuses every pixel with non-zero alpha, whose depth at faint edges is that of a stray Gaussian.)
   Silhouette pixels and surfaces seen at grazing angles give no observation (``mark_unreliable``).
   Colours are rendered over black and divided by alpha, so silhouette pixels keep the surface colour.
2. Optional depth refinement with the pifuhd normal network (``gen3d.normal_refine``), as the official
   code does; skipped with a note in ``MeshResult.notes`` when no weights are given.
3. TSDF fusion (torch, any device) in the cube [-0.6, 0.6]³ (official bounds) with ``resolution``
   samples per edge and a truncation of 5 voxels (official). Per view and voxel: (depth - z) /
   truncation clipped to 1 where the voxel lies in front of the surface sample or hides behind it by
   less than the truncation, +1 where it projects onto free space, nothing where it hides deeper.
   Observations weigh 1 (official), except that behind the surface the weight falls linearly to 0 over
   the truncation, which keeps convex edges sharp (``integrate``). The volume is stored as 4³-voxel
   blocks, allocated only within reach of a surface sample, so the work grows with the surface area,
   not the volume; a block without a surface is inside if views see its centre and none sees it as
   free space, outside otherwise.
4. Marching cubes (scikit-image) on the volume padded with "outside", so meshes are closed (a fixed
   1e-4 dither breaks the exact ties that make scikit-image emit non-manifold edges); connected
   components with fewer than ``min_component_fraction`` of the largest one's faces are dropped
   (official: fewer than 100,000 triangles at 1200³, about 2 % of the surface of an object that fills
   the cube; a fraction does not depend on the resolution); quadric decimation (``fast_simplification``)
   to ``max_faces`` (it can leave a few non-manifold edges on noisy meshes; a note then says so).
   Vertex colours: the colour fusion evaluated at each final vertex (the views that see the vertex on
   their surface, averaged), rather than a colour volume interpolated at it: sharper, and it needs no
   resampling after decimation.

Orientation: vertices stay in the Gaussians' world frame: +y up, the input view's camera on +z looking
at the origin, image right = +x. That is glTF's own convention (+y up, an asset's front faces +z), so a
.glb stands upright with the input view facing a viewer's default camera (gradio's Model3D, Babylon.js:
the camera starts on +z, slightly above). No transform is applied. (.ply *splats* are different: their
viewers use -y up, hence ``gaussians.rotate_x_180``.)

Defaults, sized for a 2-core CPU (benchmarks/mesh_bench.py): "low" renders the official 24 views at
192² (7 mm pixels at the object's centre) and fuses a 192³ volume (6.3 mm voxels): about 20 s for a
tiny-model result on a busy 2-core machine, where rendering takes half the time and 256² / 256³ take
about twice as long. "high" renders the official 72 views at the official 512² into a 512³ volume
(2.3 mm voxels). The official volumes (400³ low, 1200³ high, with 512² renders) are a
``resolution=`` / ``render_size=`` away; on a GPU they are the natural choice.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gen3d.cameras import Cameras, tsdf_cameras
from gen3d.gaussians import Gaussians

if TYPE_CHECKING:
    import trimesh

BLOCK = 4  # voxels per block edge of the sparse volume
MESH_FORMATS = (".glb", ".obj", ".ply")
QUALITY_PRESETS = {
    "low": dict(views=24, render_size=192, resolution=192, max_faces=200_000),  # official views; sized for a CPU
    "high": dict(views=72, render_size=512, resolution=512, max_faces=500_000),  # official views, render size, faces
}


@dataclass
class MeshConfig:
    """Settings of ``extract_mesh``; ``MeshConfig.from_quality`` gives the presets."""

    views: int = 24  # spiral views (cameras.tsdf_cameras)
    render_size: int = 192  # rendered image edge in pixels
    resolution: int = 192  # voxel samples along each edge of the cube (rounded up to a multiple of 4)
    bound: float = 0.6  # the cube is [-bound, bound]³ in the Gaussians' frame (official 0.6)
    truncation: float = 5.0  # TSDF truncation in voxels (official 5)
    alpha_threshold: float = 0.5  # alpha of a surface sample; below it a pixel is free space
    min_component_fraction: float = 0.02  # drop components with fewer faces than this × the largest
    max_faces: int = 200_000  # decimate above this many triangles; 0 keeps every face
    view_chunk: int = 8  # views rendered at once (memory)

    @classmethod
    def from_quality(cls, quality: str | int = "low", **overrides) -> "MeshConfig":
        """"low", "high", or a view count (with the "low" settings); ``overrides`` that are None are ignored."""
        if isinstance(quality, str) and quality.isdigit():
            quality = int(quality)
        if isinstance(quality, str):
            if quality not in QUALITY_PRESETS:
                raise ValueError(f"quality must be 'low', 'high' or a number of views, got {quality!r}")
            preset = dict(QUALITY_PRESETS[quality])
        else:
            preset = dict(QUALITY_PRESETS["low"], views=int(quality))
        preset.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**preset)
        config.check()
        return config

    def check(self) -> None:
        if self.views < 1 or self.render_size < 16 or self.resolution < 8 or self.view_chunk < 1:
            raise ValueError(f"need views >= 1, render_size >= 16, resolution >= 8, view_chunk >= 1: {self}")
        if not 0.0 < self.alpha_threshold < 1.0 or self.truncation <= 0 or self.bound <= 0 or self.max_faces < 0:
            raise ValueError(f"invalid mesh settings: {self}")


@dataclass
class MeshResult:
    """A coloured triangle mesh and how it was made."""

    mesh: "trimesh.Trimesh"  # vertices [M, 3] in the Gaussians' frame (+y up, front +z), uint8 RGBA vertex colours
    config: MeshConfig
    notes: list[str] = field(default_factory=list)  # what was skipped or adjusted, for the user
    seconds: dict[str, float] = field(default_factory=dict)  # per stage
    refined: bool = False  # depth refined with the normal network

    def summary(self) -> dict:
        """JSON-ready numbers (vertices, faces, watertight, volume, bounds, settings, timings, notes)."""
        m = self.mesh
        return {"vertices": int(len(m.vertices)), "faces": int(len(m.faces)), "watertight": bool(m.is_watertight),
                "volume": float(m.volume) if m.is_watertight else None,
                "bounds": np.asarray(m.bounds).round(5).tolist(), "refined": self.refined,
                "config": asdict(self.config), "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                "notes": list(self.notes)}


# ------------------------------------------------------------------------------------------- rendering
@dataclass
class DepthViews:
    """What the renders tell the fusion: per view a surface depth and colour."""

    depth: Tensor  # [V, H, W] camera z (OpenCV) of the surface; 0: free space; negated: unreliable pixel
    color: Tensor  # [V, H, W, 3] uint8 surface colour (un-premultiplied, 8 bits as the official fusion), 0 where free
    cameras: Cameras


def render_depth_views(gaussians: Gaussians, cameras: Cameras, alpha_threshold: float = 0.5, chunk: int = 8,
                       refiner=None) -> DepthViews:
    """Render surface depth and colour at every camera; ``refiner(color_white, depth, mask, cameras)``
    (see ``gen3d.normal_refine.DepthRefiner``) may replace the depth of each chunk."""
    from gen3d.render import render

    depths, colors = [], []
    for start in range(0, len(cameras), chunk):
        cams = cameras[start: start + chunk]
        out = render(gaussians, cams, background=(0.0, 0.0, 0.0), normals=False)
        alpha = out.alpha[:, 0]
        surface = (alpha >= alpha_threshold) & (out.depth[:, 0] > 0)
        depth = torch.where(surface, out.depth[:, 0], torch.zeros_like(alpha))
        if refiner is not None:
            on_white = out.color + (1.0 - alpha[:, None])  # the official network input: a render over white
            depth = refiner(on_white, depth, surface, cams)
            surface = depth > 0
        color = (out.color / alpha[:, None].clamp_min(1e-6)).clamp(0.0, 1.0) * surface[:, None]
        depths.append(mark_unreliable(depth, cams.fx).float())
        colors.append((color.permute(0, 2, 3, 1) * 255).round().to(torch.uint8))
    return DepthViews(depth=torch.cat(depths), color=torch.cat(colors), cameras=cameras)


def mark_unreliable(depth: Tensor, focal: float, max_slope: float = 4.0) -> Tensor:
    """Negate depth [V, H, W] ("no observation" for the fusion; the colour lookup still uses it) at
    silhouette pixels (a 4-neighbour is free space)
    and where the surface is seen at a grazing angle (depth changes by more than ``max_slope`` pixel
    footprints to a neighbour, i.e. tilted more than ~76°). A pixel there covers both the surface and
    what lies beside it, so one depth is wrong for much of it: fused as is, such pixels bulge convex
    edges outwards by about a pixel footprint."""
    surface = depth > 0
    padded = F.pad(depth[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    neighbours = [padded[:, 1:-1, :-2], padded[:, 1:-1, 2:], padded[:, :-2, 1:-1], padded[:, 2:, 1:-1]]
    limit = max_slope * depth / focal  # pixel footprint at this depth × max_slope
    unreliable = torch.zeros_like(surface)
    for n in neighbours:
        unreliable |= (n <= 0) | ((n - depth).abs() > limit)
    return torch.where(surface & unreliable, -depth, depth)


# --------------------------------------------------------------------------------------------- fusion
@dataclass
class VoxelGrid:
    """Samples x_i = -bound + i·spacing, i = 0..size-1, on each axis; stored in BLOCK³ blocks."""

    size: int
    bound: float

    @classmethod
    def make(cls, resolution: int, bound: float) -> "VoxelGrid":
        return cls(size=BLOCK * math.ceil(resolution / BLOCK), bound=bound)

    @property
    def spacing(self) -> float:
        return 2.0 * self.bound / (self.size - 1)

    @property
    def blocks(self) -> int:
        return self.size // BLOCK


@dataclass
class Fused:
    """A fused volume: values on the allocated blocks, a label for every other block."""

    grid: VoxelGrid
    active: Tensor  # [K, 3] int64 block coordinates of the allocated blocks
    tsdf: Tensor  # [K, BLOCK³] fused values in [-1, 1], voxels in x-major order inside a block
    labels: Tensor  # [blocks, blocks, blocks] +1 outside / -1 inside for unallocated blocks, 0 for allocated


_LOCAL = torch.stack(torch.meshgrid(*[torch.arange(BLOCK)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)  # [BLOCK³, 3]


def _pixel_projections(cameras: Cameras) -> list[list[list[float]]]:
    """Per view the 3x4 rows of K·[R|t] (OpenCV): world point -> (col·z, row·z, z), where pixel i
    covers [i, i + 1) (centre at i + 0.5, the renderer's convention)."""
    k = cameras.intrinsics().to(torch.float64).cpu()
    return (k @ cameras.w2c_cv().to(torch.float64).cpu()[:, :3]).tolist()


def _affine(row: list[float], x: Tensor, y: Tensor, z: Tensor) -> Tensor:
    # Elementwise rather than an [M, 3] x [3, 4] matmul: several times faster on a CPU.
    return x.mul(row[0]).add_(y, alpha=row[1]).add_(z, alpha=row[2]).add_(row[3])


def _lookup(projection: list[list[float]], points: tuple[Tensor, Tensor, Tensor], height: int, width: int
            ) -> tuple[Tensor, Tensor]:
    """Camera z [M] and flat pixel index [M] into an image padded by one pixel on each side: points
    outside the image (or behind the camera) land on the padding."""
    z = _affine(projection[2], *points)
    inv_z = z.clamp_min(1e-6).reciprocal_()
    col = _affine(projection[0], *points).mul_(inv_z).clamp_(-1.0, width).add_(1.0).long()  # >= 0: long = floor
    row = _affine(projection[1], *points).mul_(inv_z).clamp_(-1.0, height).add_(1.0).long()
    return z, row.mul_(width + 2).add_(col)


def _padded(images: Tensor, border: float) -> Tensor:
    """[V, H, W, ...] -> [V, (H + 2)·(W + 2), ...] with a border of ``border`` (see ``_lookup``)."""
    moved = images.movedim((1, 2), (-2, -1))
    padded = F.pad(moved, (1, 1, 1, 1), value=border).movedim((-2, -1), (1, 2))
    return padded.reshape(images.shape[0], -1, *images.shape[3:])


def backproject(depth: Tensor, cameras: Cameras) -> list[Tensor]:
    """World points [P_v, 3] of the surface pixels (depth > 0) of each view; pixel centres at +0.5."""
    c2w = cameras.c2w_cv().to(depth)
    points = []
    for v in range(depth.shape[0]):
        rows, cols = torch.nonzero(depth[v] > 0, as_tuple=True)
        z = depth[v, rows, cols]
        cam = torch.stack([(cols + 0.5 - cameras.cx) / cameras.fx * z, (rows + 0.5 - cameras.cy) / cameras.fy * z, z], -1)
        points.append(cam @ c2w[v, :3, :3].T + c2w[v, :3, 3])
    return points


def surface_blocks(views: DepthViews, grid: VoxelGrid, reach: float) -> Tensor:
    """[blocks, blocks, blocks] bool: blocks within ``reach`` (world units) of a surface sample."""
    nb = grid.blocks
    occupied = torch.zeros(nb ** 3, dtype=torch.bool, device=views.depth.device)
    for points in backproject(views.depth, views.cameras):
        idx = torch.round((points + grid.bound) / grid.spacing).long()
        idx = idx[((idx >= 0) & (idx < grid.size)).all(-1)] // BLOCK
        occupied[(idx[:, 0] * nb + idx[:, 1]) * nb + idx[:, 2]] = True
    radius = math.ceil(reach / (grid.spacing * BLOCK))
    grown = F.max_pool3d(occupied.view(1, 1, nb, nb, nb).float(), 2 * radius + 1, stride=1, padding=radius)
    return grown[0, 0] > 0


_FREE, _UNRELIABLE, _OUTSIDE = 1e4, -1e4, -1e5  # depth codes of the fusion (see integrate)


def _chunk_size(device: torch.device) -> int:
    """Points per step of the per-view loops. On a CPU, 32,768: torch runs an elementwise op on fewer
    elements than its grain size (32,768) on the calling thread. The loops issue a few dozen small ops
    per view, and on a busy machine OpenMP threads waiting for each other at every op cost far more
    than they gain (measured here beside a training job: 25x slower with chunks of 65,536)."""
    return 1 << 15 if device.type == "cpu" else 1 << 22


def _fusion_codes(views: DepthViews) -> Tensor:
    """[V, H + 2, W + 2] depth codes: surface depth, _FREE, _UNRELIABLE, and _OUTSIDE on the padding."""
    d = views.depth
    codes = torch.where(d > 0, d, torch.where(d == 0, _FREE, _UNRELIABLE))
    return F.pad(codes, (1, 1, 1, 1), value=_OUTSIDE)


def integrate(points: Tensor, views: DepthViews, truncation: float, full_weight_depth: float = 0.0) -> Tensor:
    """Fuse every view at world points [M, 3] -> TSDF values [M] in [-1, 1] (positive outside).

    Per view, q = (depth - z) / truncation (positive: the point lies in front of the surface sample of
    its pixel), clipped to 1, is averaged with a weight that is 1 down to ``full_weight_depth`` behind
    the surface and falls linearly to 0 at one truncation behind it (hidden deeper: no observation).
    Official TSDF fusion weighs every observation behind the surface 1; at a convex edge, though, a
    view grazing one face sees the space just past the edge as "behind the surface", and full weight
    there thickens edges and corners (the drop-off is what voxblox and similar fusion systems do).
    A pixel of free space counts as +1 with weight 1, an unreliable pixel not at all: coded as a surface
    far behind every point and one far in front, the same formula covers them. A point no view
    observes is -1 (inside) if some view has it in its image (it is hidden in every view), else +1.
    Points go through in chunks (see ``_chunk_size``).
    """
    projections = _pixel_projections(views.cameras)
    num_views, height, width = views.depth.shape
    codes = _fusion_codes(views).reshape(num_views, -1)  # [V, (H + 2)·(W + 2)]
    slope = truncation / (truncation - full_weight_depth)
    out = []
    chunk = _chunk_size(points.device)
    for start in range(0, len(points), chunk):
        xyz = points[start: start + chunk].unbind(-1)
        total = torch.zeros_like(xyz[0])
        weight = torch.zeros_like(total)
        seen = torch.zeros(len(total), dtype=torch.bool, device=total.device)
        for v in range(num_views):
            z, pixel = _lookup(projections[v], xyz, height, width)
            depth = codes[v].index_select(0, pixel)
            seen |= depth > 0.5 * _OUTSIDE
            q = depth.sub_(z).mul_(1.0 / truncation)  # signed distance in truncations, positive in front
            w = (q + 1.0).mul_(slope).clamp_(0.0, 1.0)
            total.addcmul_(q.clamp_(max=1.0), w)
            weight += w
        unobserved = torch.where(seen, -1.0, 1.0).to(total.dtype)
        out.append(torch.where(weight > 1e-6, total / weight.clamp_min(1e-6), unobserved))
    return torch.cat(out)


def fuse(views: DepthViews, grid: VoxelGrid, truncation_voxels: float) -> Fused:
    """TSDF fusion on the blocks near the surface, labels for the others (see the module docstring)."""
    device, nb = views.depth.device, grid.blocks
    truncation = truncation_voxels * grid.spacing
    # Where a view's value is inside (-1, 1), its surface sample lies within ~1.1·truncation (rays up to
    # 25° off axis), half a pixel and the voxel rounding: allocate every block that close to a sample.
    pixel = 2.6 / views.cameras.fx  # pixel footprint at the far side of the cube (z <= 1.5 + 0.6·√3)
    allocated = surface_blocks(views, grid, 1.1 * truncation + 0.5 * pixel + 0.87 * grid.spacing)
    if not allocated.any():
        raise ValueError("no surface found: no surface sample lies inside the "
                         f"[-{grid.bound}, {grid.bound}]³ cube")
    active = torch.nonzero(allocated)  # [K, 3]
    dtype, local = views.depth.dtype, _LOCAL.to(device)
    tsdf = torch.empty(len(active), BLOCK ** 3, dtype=dtype, device=device)
    step = (1 << 20) // BLOCK ** 3  # blocks per call: voxel coordinates exist for these only
    for start in range(0, len(active), step):
        voxels = (active[start: start + step, None, :] * BLOCK + local).reshape(-1, 3)
        values = integrate(voxels.to(dtype) * grid.spacing - grid.bound, views, truncation, grid.spacing)
        tsdf[start: start + step] = values.view(-1, BLOCK ** 3)
    # Other blocks hold no surface, so one sample at the centre decides the block. Only those within the
    # bounding box of the allocated blocks can be inside: the rest of the cube is outside.
    labels = torch.ones(nb, nb, nb, dtype=dtype, device=device)
    labels[allocated] = 0.0
    lo, hi = active.min(0).values, active.max(0).values + 1
    box = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    todo = torch.nonzero(box != 0)
    if len(todo):
        centres = ((todo + lo) * BLOCK + (BLOCK - 1) / 2).to(dtype) * grid.spacing - grid.bound
        box[todo[:, 0], todo[:, 1], todo[:, 2]] = torch.where(integrate(centres, views, truncation) < 0, -1.0, 1.0)
    return Fused(grid=grid, active=active, tsdf=tsdf, labels=labels)


def dense_volume(fused: Fused) -> tuple[np.ndarray, np.ndarray]:
    """The fused values as a dense float32 array over the bounding box of the allocated blocks, with
    one extra "outside" sample on each side, and the world position of its first sample [3]."""
    grid = fused.grid
    lo, hi = fused.active.min(0).values, fused.active.max(0).values + 1
    box = fused.labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].cpu().float()
    bx, by, bz = box.shape
    padded = np.ones((bx * BLOCK + 2, by * BLOCK + 2, bz * BLOCK + 2), dtype=np.float32)
    # Written through a view of the interior split into blocks: no full-size temporary.
    blocks = torch.from_numpy(padded)[1:-1, 1:-1, 1:-1].unflatten(0, (bx, BLOCK)).unflatten(2, (by, BLOCK))
    blocks = blocks.unflatten(4, (bz, BLOCK))  # [bx, B, by, B, bz, B]
    blocks.copy_(box[:, None, :, None, :, None].expand_as(blocks))
    a = (fused.active - lo).cpu()
    blocks[a[:, 0], :, a[:, 1], :, a[:, 2], :] = fused.tsdf.cpu().float().view(-1, BLOCK, BLOCK, BLOCK)
    origin = (lo * BLOCK - 1).to(torch.float64) * grid.spacing - grid.bound
    return dither(padded), origin.cpu().numpy()


def dither(volume: np.ndarray, amplitude: float = 1e-4) -> np.ndarray:
    """Add a fixed pattern in [-amplitude/2, amplitude/2] to a TSDF (in place; returned).

    Most samples are exactly +1 or -1, and marching cubes' face test (a·c - b·d of a face's corners) is
    then often exactly 0; scikit-image resolves such ties inconsistently between neighbouring cubes and
    emits non-manifold edges (scikit-image issue 8109). The pattern frac(0.755·i·j + 0.570·j·k +
    0.618·k·i + 0.414·(i + j + k)) has a non-zero mixed difference on every face, so no tie remains; its
    size (1e-4 of the truncation) moves the surface by nothing measurable. Deterministic."""
    n0, n1, n2 = volume.shape
    j = np.arange(n1, dtype=np.float64)[:, None]
    k = np.arange(n2, dtype=np.float64)[None, :]
    slope = 0.7548776662466927 * j + 0.6180339887498949 * k + 0.4142135623730950  # per unit of i
    offset = 0.5698402909980532 * j * k + 0.4142135623730950 * (j + k)
    for i in range(n0):
        pattern = np.modf(i * slope + offset)[0]
        volume[i] += (amplitude * (pattern - 0.5)).astype(np.float32)
    return volume


def vertex_colors(vertices: Tensor, views: DepthViews, tolerance: float) -> Tensor:
    """Fused colour [M, 3] in [0, 1] at world points [M, 3].

    The colour fusion evaluated at the vertices themselves: the average over the views whose surface
    sample at the vertex's pixel lies within ``tolerance`` of the vertex's depth, weighted by
    1 - |depth - z| / tolerance (views that see the vertex on their surface count most). A vertex that
    no view sees within the tolerance takes the observation closest in depth.
    """
    projections = _pixel_projections(views.cameras)
    num_views, height, width = views.depth.shape
    depths = _padded(views.depth.abs(), 0.0)  # unreliable (silhouette) pixels still hold a colour
    colors = _padded(views.color, 0)
    out = []
    chunk = _chunk_size(vertices.device) // 4  # [chunk, 3] colour tensors stay below the grain size too
    for start in range(0, len(vertices), chunk):
        xyz = vertices[start: start + chunk].unbind(-1)
        acc = torch.zeros(len(xyz[0]), 3, dtype=vertices.dtype, device=vertices.device)
        total = torch.zeros_like(xyz[0])
        best_error = torch.full_like(total, float("inf"))
        best = torch.zeros_like(acc)
        for v in range(num_views):
            z, pixel = _lookup(projections[v], xyz, height, width)
            d = depths[v].index_select(0, pixel)
            error = torch.where(d > 0, (d - z).abs(), float("inf"))
            color = colors[v].index_select(0, pixel).to(acc.dtype) / 255.0
            w = (1.0 - error / tolerance).clamp_(min=0.0)
            acc.addcmul_(color, w[:, None])
            total += w
            best = torch.where((error < best_error)[:, None], color, best)
            best_error = torch.minimum(error, best_error)
        out.append(torch.where((total > 0)[:, None], acc / total.clamp_min(1e-12)[:, None], best))
    return torch.cat(out).clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------------------- mesh steps
def marching_cubes(volume: np.ndarray, origin: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Zero level set of a TSDF (negative inside) -> vertices [M, 3] (world) and outward faces [F, 3]."""
    from skimage import measure

    if volume.min() >= 0 or volume.max() <= 0:
        raise ValueError("no surface found: the fused volume has no zero crossing")
    # With scikit-image's default winding ("descent") the faces of this field (negative inside) turn
    # counter-clockwise seen from outside: positive volume, outward normals (tests check both).
    vertices, faces, _, _ = measure.marching_cubes(volume, level=0.0, spacing=(spacing,) * 3)
    return vertices + origin, faces.astype(np.int64)


def drop_small_components(vertices: np.ndarray, faces: np.ndarray, min_fraction: float
                          ) -> tuple[np.ndarray, np.ndarray, int]:
    """Remove connected components (sharing vertices) with fewer faces than ``min_fraction`` × the
    largest; returns vertices, faces and the number of components dropped."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])),
                       shape=(len(vertices),) * 2)
    n, labels = connected_components(graph, directed=False)
    face_label = labels[faces[:, 0]]
    sizes = np.bincount(face_label, minlength=n)
    keep_label = sizes >= min_fraction * sizes.max()
    faces = faces[keep_label[face_label]]
    used = np.zeros(len(vertices), dtype=bool)
    used[faces] = True
    remap = np.cumsum(used) - 1
    return vertices[used], remap[faces], int((sizes > 0).sum() - keep_label[sizes > 0].sum())


def count_bad_edges(faces: np.ndarray) -> int:
    """Edges not shared by exactly two faces (0 for a closed, edge-manifold mesh)."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return int((counts != 2).sum())


def decimate(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric edge-collapse decimation to about ``max_faces`` triangles (fast_simplification)."""
    from fast_simplification import simplify

    v, f = simplify(vertices.astype(np.float32), faces.astype(np.int64), target_count=max_faces)
    return np.asarray(v, dtype=np.float64), np.asarray(f, dtype=np.int64)


# ---------------------------------------------------------------------------------------- public API
class _Stopwatch:
    """Seconds per stage, in order."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = now - self._last
        self._last = now


def _clean(vertices: np.ndarray, faces: np.ndarray, config: MeshConfig, notes: list[str], clock: _Stopwatch
           ) -> tuple[np.ndarray, np.ndarray]:
    """Drop small components, then decimate to the face budget; notes say what happened."""
    vertices, faces, dropped = drop_small_components(vertices, faces, config.min_component_fraction)
    if dropped:
        notes.append(f"dropped {dropped} small component(s) (< {config.min_component_fraction:.0%} of the "
                     "largest one's faces)")
    clock.lap("marching_cubes")
    if config.max_faces and len(faces) > config.max_faces:
        try:
            vertices, faces = decimate(vertices, faces, config.max_faces)
        except ImportError:
            notes.append(f"decimation skipped ({len(faces)} faces kept): install fast-simplification")
        else:
            bad = count_bad_edges(faces)
            if bad:
                notes.append(f"decimation left {bad} edge(s) not shared by exactly two faces (the mesh before "
                             "it was closed); max_faces=0 keeps the closed mesh")
        clock.lap("decimate")
    return vertices, faces


@torch.no_grad()
def extract_mesh(
    gaussians: Gaussians,  # unbatched, relative OpenGL world frame (+y up); rendering and fusion run on its device
    quality: str | int = "low",  # "low" (24 views), "high" (72 views), or a view count with the "low" settings
    resolution: int | None = None,  # voxel samples per cube edge (preset: 192 low, 512 high)
    render_size: int | None = None,  # rendered image edge (preset: 192 low, 512 high)
    max_faces: int | None = None,  # face budget (preset: 200k low, 500k high); 0 keeps every face
    normal_weights=None,  # depth refinement: a pifuhd .safetensors path or a gen3d.normal_refine.DepthRefiner
    config: MeshConfig | None = None,  # full settings; the arguments above override it when given
    progress: Callable[[float, str], None] | None = None,  # called with (fraction done, next stage)
) -> MeshResult:
    """Gaussians -> coloured, closed triangle mesh (see the module docstring for every step).

    Raises ValueError for batched or empty Gaussians, bad settings, or when no surface is found
    (nothing reaches alpha 0.5 inside the cube). Deterministic: no randomness anywhere.
    """
    import trimesh

    if not isinstance(gaussians, Gaussians) or gaussians.batch_shape:
        raise ValueError("extract_mesh takes one unbatched gen3d Gaussians (means [N, 3])")
    if len(gaussians) == 0:
        raise ValueError("extract_mesh got no Gaussians")
    overrides = dict(resolution=resolution, render_size=render_size, max_faces=max_faces)
    if config is None:
        config = MeshConfig.from_quality(quality, **overrides)
    else:
        config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
        config.check()
    report = progress or (lambda fraction, stage: None)
    notes, clock = [], _Stopwatch()
    refiner = normal_weights
    if isinstance(normal_weights, (str, os.PathLike)):
        from gen3d.normal_refine import DepthRefiner

        refiner = DepthRefiner.from_file(normal_weights, device=gaussians.device)
    if refiner is None:
        notes.append("depth refinement skipped: no normal-network weights given (normal_weights=, a "
                     "pifuhd .safetensors; see gen3d.normal_refine)")

    report(0.0, "rendering")
    cameras = tsdf_cameras(config.views, config.render_size)
    views = render_depth_views(gaussians.detach().to(dtype=torch.float32), cameras, config.alpha_threshold, config.view_chunk, refiner)
    if not (views.depth > 0).any():
        raise ValueError("no surface found: no pixel of any view reaches alpha "
                         f"{config.alpha_threshold} (empty or transparent Gaussians?)")
    clock.lap("render")
    report(0.6, "fusing")
    grid = VoxelGrid.make(config.resolution, config.bound)
    if grid.size != config.resolution:
        notes.append(f"resolution rounded up to {grid.size} (a multiple of {BLOCK})")
    volume, origin = dense_volume(fuse(views, grid, config.truncation))
    clock.lap("fuse")
    report(0.8, "marching cubes")
    vertices, faces = _clean(*marching_cubes(volume, origin, grid.spacing), config, notes, clock)
    report(0.95, "colours")
    points = torch.as_tensor(vertices, dtype=views.depth.dtype, device=views.depth.device)
    colors = vertex_colors(points, views, 0.5 * config.truncation * grid.spacing).cpu().numpy()
    rgba = np.concatenate([(colors * 255).round().astype(np.uint8), np.full((len(vertices), 1), 255, np.uint8)], 1)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=rgba, process=False)
    clock.lap("colors")
    clock.seconds["total"] = sum(clock.seconds.values())
    report(1.0, "done")
    return MeshResult(mesh=mesh, config=config, notes=notes, seconds=clock.seconds, refined=refiner is not None)


def export_mesh(mesh: "MeshResult | trimesh.Trimesh", path: str | os.PathLike) -> Path:
    """Write .glb, .obj or .ply (chosen by the suffix) with per-vertex colours, in the frame above.

    .glb: COLOR_0 (uint8 RGBA), smooth vertex normals, and a plain material (white, metallic 0,
    roughness 1), since glTF's default material is fully metallic and renders vertex colours dark. .obj: colours after each
    vertex (``v x y z r g b``, read by Blender, MeshLab and trimesh). .ply: binary with red/green/blue/alpha.
    """
    import trimesh

    mesh = mesh.mesh if isinstance(mesh, MeshResult) else mesh
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_FORMATS:
        raise ValueError(f"mesh files can be {', '.join(MESH_FORMATS)}; got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    colors = np.asarray(mesh.visual.vertex_colors, dtype=np.uint8)
    if suffix == ".glb":
        material = trimesh.visual.material.PBRMaterial(baseColorFactor=[255, 255, 255, 255], metallicFactor=0.0,
                                                       roughnessFactor=1.0, doubleSided=False)
        visual = trimesh.visual.TextureVisuals(material=material)
        visual.vertex_attributes["color"] = colors
        out = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, visual=visual, process=False)
        path.write_bytes(out.export(file_type="glb", include_normals=True))  # else viewers shade it faceted
    else:
        out = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, vertex_colors=colors, process=False)
        out.export(str(path))
    return path


def write_mesh_files(result: MeshResult, directory: str | os.PathLike, stem: str = "mesh",
                     formats: tuple[str, ...] = (".glb",)) -> list[Path]:
    """Write ``<stem><format>`` for each format and ``<stem>.json`` (``MeshResult.summary()``) into
    ``directory``; returns the paths written."""
    import json

    directory = Path(directory)
    paths = [export_mesh(result, directory / f"{stem}{fmt}") for fmt in formats]
    summary = directory / f"{stem}.json"
    summary.write_text(json.dumps(result.summary(), indent=2, sort_keys=True))
    return paths + [summary]


def load_mesh_colors(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read back a file written by ``export_mesh``: vertices [M, 3], faces [F, 3], uint8 RGBA colours [M, 4]."""
    import trimesh

    loaded = trimesh.load(str(path), process=False)
    mesh = list(loaded.geometry.values())[0] if isinstance(loaded, trimesh.Scene) else loaded
    visual = mesh.visual
    if getattr(visual, "kind", None) == "vertex":
        colors = visual.vertex_colors
    else:
        colors = visual.vertex_attributes["color"]
    return np.asarray(mesh.vertices), np.asarray(mesh.faces), np.asarray(colors, dtype=np.uint8)


__all__ = ["MeshConfig", "MeshResult", "QUALITY_PRESETS", "MESH_FORMATS", "extract_mesh", "export_mesh",
           "write_mesh_files", "load_mesh_colors", "render_depth_views", "fuse", "VoxelGrid"]

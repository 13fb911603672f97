"""Rendering procedural objects: rays from ``Cameras``, shading, adaptive antialiasing, view sets.

``render_object(spec, cameras)`` casts one ray per pixel centre (only in 8x8 screen tiles whose cone
meets some part's bounding ball, and only against those parts), finds the pixels where the part under
the pixel changes (silhouettes and part boundaries) and re-traces those with a regular grid of
``supersample``² sub-pixel rays, so edges and alpha are soft. Shading: a key and a fill light
(Lambert), a sky/ground hemisphere ambient and a Blinn specular on the key light, all fixed in the
relative world frame and identical for every view, so an object looks the same from everywhere.
rgb is composited on white.

Views of one object (``object_cameras``), in the relative frame of spec section 8: the input view is
target view 0 (``target_cameras()``: azimuth 0/90/180/270, elevation 0), followed by ``n_novel``
views drawn without replacement from ``spiral_cameras(100)`` (avatars: the flatter avatar spiral of
the official pose files). Input-elevation convention: an object's input elevation e (objects: uniform
in [-20, 20] degrees, avatars: 0) is baked into its parts as a tilt by -e about the x axis, which is
exactly how the upright object looks from kiui elevation e. So the input camera always sits at
azimuth 0, elevation 0, as the official inference assumes, and the targets are the canonical ring
around the (tilted) object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras, spiral_cameras, target_cameras
from .shapes import PATTERNS, ObjectSpec
from .tracer import Hits, PartTensors, trace

N_SPIRAL = 100  # candidate novel views: spiral_cameras(N_SPIRAL)
N_TARGETS = 4


@dataclass(frozen=True)
class Lighting:
    """World-fixed lights; directions point from the surface towards the light."""

    key_dir: tuple[float, float, float] = (0.45, 0.75, 0.5)
    key: float = 0.55
    fill_dir: tuple[float, float, float] = (-0.55, 0.35, -0.5)
    fill: float = 0.35
    sky: float = 0.45
    ground: float = 0.2
    shininess: float = 40.0


@dataclass(frozen=True)
class RenderedViews:
    rgb: Tensor  # [V, 3, H, W] in [0, 1], composited on white
    alpha: Tensor  # [V, 1, H, W] in [0, 1], antialiased coverage
    depth: Tensor  # [V, 1, H, W] camera z (OpenCV, > 0) where alpha > 0.5, else 0


@dataclass(frozen=True)
class _Materials:
    color: Tensor  # [P, 3]
    color2: Tensor  # [P, 3]
    pattern: Tensor  # [P] long
    frequency: Tensor  # [P] cycles per part radius
    axis: Tensor  # [P, 3]
    specular: Tensor  # [P]
    radius: Tensor  # [P]

    @classmethod
    def from_spec(cls, spec: ObjectSpec, device=None) -> "_Materials":
        def f32(values):
            return torch.tensor(np.asarray(values, dtype=np.float32), device=device)

        mats = [p.material for p in spec.parts]
        axes = np.array([m.axis for m in mats], dtype=np.float32)
        return cls(
            color=f32([m.color for m in mats]),
            color2=f32([m.color2 for m in mats]),
            pattern=torch.tensor([PATTERNS.index(m.pattern) for m in mats], device=device),
            frequency=f32([m.frequency for m in mats]),
            axis=f32(axes / np.linalg.norm(axes, axis=1, keepdims=True)),
            specular=f32([m.specular for m in mats]),
            radius=f32([p.bounding_radius() for p in spec.parts]),
        )


def _pattern_mix(mats: _Materials, part: Tensor, local: Tensor) -> Tensor:
    """Weight [R] of the second colour at local hit points [R, 3] of parts ``part`` [R]."""
    u = local / mats.radius[part, None] * mats.frequency[part, None]  # pattern cycles
    along = (u * mats.axis[part]).sum(-1)
    s = torch.sin(2 * torch.pi * u)
    stripes = torch.sigmoid(6 * torch.sin(2 * torch.pi * along))
    checks = torch.sigmoid(12 * s.prod(-1))
    dots = torch.sigmoid(30 * (0.28 - (u - torch.floor(u) - 0.5).norm(dim=-1)))
    two_tone = torch.sigmoid(40 * (local * mats.axis[part]).sum(-1) / mats.radius[part])
    table = torch.stack([torch.zeros_like(along), stripes, checks, dots, two_tone], dim=-1)
    return table.gather(1, mats.pattern[part, None]).squeeze(1)


def shade(hits: Hits, dirs: Tensor, mats: _Materials, lighting: Lighting = Lighting()) -> Tensor:
    """Straight (unpremultiplied) colours [R, 3] of rays [R]; white where nothing was hit."""
    colors = torch.ones_like(dirs)
    hit = torch.nonzero(hits.part >= 0).squeeze(1)
    dirs, part = dirs[hit], hits.part[hit]
    n = hits.normals[hit]
    n = torch.where(((n * dirs).sum(-1) > 0)[:, None], -n, n)  # face the viewer
    w = _pattern_mix(mats, part, hits.local_points[hit])[:, None]
    albedo = (1 - w) * mats.color[part] + w * mats.color2[part]
    key_dir = F.normalize(torch.tensor(lighting.key_dir, device=dirs.device), dim=0)
    fill_dir = F.normalize(torch.tensor(lighting.fill_dir, device=dirs.device), dim=0)
    up = 0.5 + 0.5 * n[:, 1:2]
    diffuse = (lighting.ground + (lighting.sky - lighting.ground) * up
               + lighting.key * (n @ key_dir).clamp_min(0)[:, None]
               + lighting.fill * (n @ fill_dir).clamp_min(0)[:, None])
    half = F.normalize(key_dir - dirs, dim=-1)
    spec = mats.specular[part, None] * (n * half).sum(-1, keepdim=True).clamp_min(0) ** lighting.shininess
    colors[hit] = (albedo * diffuse + spec).clamp(0, 1)
    return colors


def _camera_dirs(cameras: Cameras, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Unit camera-frame (OpenGL) directions [R, 3] through pixel positions x, y (centres at +0.5)
    and the factor [R] that turns distance along the ray into camera z."""
    d_cam = torch.stack([(x - cameras.cx) / cameras.fx, -(y - cameras.cy) / cameras.fy, -torch.ones_like(x)], -1)
    norm = d_cam.norm(dim=-1)
    return d_cam / norm[:, None], 1.0 / norm


def _rays(cameras: Cameras, view: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """World rays through pixel positions of views ``view`` [R] (sorted): origins, unit dirs, z factors."""
    c2w = cameras.c2w_gl.float()
    d_cam, z_factor = _camera_dirs(cameras, x, y)
    counts = torch.bincount(view, minlength=len(cameras)).tolist()
    dirs = torch.cat([d @ c2w[v, :3, :3].T for v, d in enumerate(torch.split(d_cam, counts))])
    return c2w[view, :3, 3], dirs, z_factor


@dataclass(frozen=True)
class _Tiles:
    """Screen tiles of ``size``² pixels and the parts whose bounding balls they may see (CSR lists)."""

    size: int
    per_row: int  # tiles per image row
    per_view: int
    start: Tensor  # [V * per_view] first entry of each tile in ``parts``
    count: Tensor  # [V * per_view] number of parts of each tile
    parts: Tensor  # part indices, grouped by tile

    def key(self, view: Tensor, col: Tensor, row: Tensor) -> Tensor:
        return view * self.per_view + (row // self.size) * self.per_row + col // self.size

    def pairs(self, keys: Tensor) -> tuple[Tensor, Tensor]:
        """(ray, part) candidate pairs of rays in tiles ``keys`` [R]."""
        counts = self.count[keys]
        rays = torch.repeat_interleave(torch.arange(keys.shape[0], device=keys.device), counts)
        first = torch.cumsum(counts, 0) - counts
        offset = torch.arange(rays.shape[0], device=keys.device) - first[rays]
        return rays, self.parts[self.start[keys[rays]] + offset]


def _tiles(parts: PartTensors, cameras: Cameras, size: int) -> _Tiles:
    """Cone-ball culling: a tile sees a part if their angular extents from the camera overlap."""
    height, width = cameras.height, cameras.width
    rows, cols = -(-height // size), -(-width // size)
    ty, tx = torch.meshgrid(torch.arange(rows, device=cameras.device), torch.arange(cols, device=cameras.device),
                            indexing="ij")
    x0, y0 = (tx.reshape(-1) * size).float(), (ty.reshape(-1) * size).float()
    x1, y1 = (x0 + size).clamp_max(width), (y0 + size).clamp_max(height)
    centre, _ = _camera_dirs(cameras, (x0 + x1) / 2, (y0 + y1) / 2)  # [T, 3]
    cos_half = torch.stack([(centre * _camera_dirs(cameras, x, y)[0]).sum(-1)
                            for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))]).min(0).values
    tile_angle = torch.acos(cos_half.clamp(-1, 1))  # [T]
    c2w = cameras.c2w_gl.float()
    oc = parts.centers[None] - c2w[:, None, :3, 3]  # [V, P, 3]
    dist = oc.norm(dim=-1)
    ball_angle = torch.asin((parts.radii / dist).clamp_max(1))  # [V, P]
    oc_cam = oc @ c2w[:, :3, :3]  # camera-frame vectors to the part centres
    cos_gap = (centre @ oc_cam.transpose(1, 2)) / dist[:, None]  # [V, T, P]
    limit = torch.cos((tile_angle[None, :, None] + ball_angle[:, None, :]).clamp_max(torch.pi))
    view, tile, part = torch.nonzero(cos_gap >= limit - 1e-6, as_tuple=True)
    count = torch.bincount(view * rows * cols + tile, minlength=len(cameras) * rows * cols)
    return _Tiles(size, cols, rows * cols, torch.cumsum(count, 0) - count, count, part)


def _edge_pixels(part_map: Tensor) -> Tensor:
    """[V, H, W] bool: pixels whose 3x3 neighbourhood sees more than one part id (or background)."""
    ids = part_map.float()[:, None]
    hi = F.max_pool2d(ids, 3, stride=1, padding=1)
    lo = -F.max_pool2d(-ids, 3, stride=1, padding=1)
    return (hi != lo)[:, 0]


def _tile_size(height: int, width: int) -> int:
    return 8 if height % 8 == 0 and width % 8 == 0 else 1


def render_object(spec: ObjectSpec, cameras: Cameras, supersample: int = 2,
                  lighting: Lighting = Lighting()) -> RenderedViews:
    """Render ``spec`` from ``cameras`` (relative frame) with edges antialiased by ``supersample``².

    Pixels are traced once at their centres; pixels next to a change of part (or of object and
    background) are traced again with ``supersample``² sub-pixel rays and averaged (1: no antialiasing).
    """
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    device = cameras.device
    parts = PartTensors.from_parts(spec.parts, device)
    mats = _Materials.from_spec(spec, device)
    n_views, height, width = len(cameras), cameras.height, cameras.width
    tiles = _tiles(parts, cameras, _tile_size(height, width))
    view, row, col = (x.reshape(-1) for x in torch.meshgrid(
        torch.arange(n_views, device=device), torch.arange(height, device=device),
        torch.arange(width, device=device), indexing="ij"))
    keys = tiles.key(view, col, row)
    active = torch.nonzero(tiles.count[keys] > 0).squeeze(1)  # pixels whose tile sees some part
    origins, dirs, z_factor = _rays(cameras, view[active], col[active] + 0.5, row[active] + 0.5)
    hits = trace(parts, origins, dirs, tiles.pairs(keys[active]))
    part_map = torch.full((view.shape[0],), -1, dtype=torch.long, device=device)
    part_map[active] = hits.part
    colors = torch.ones(view.shape[0], 3, device=device)
    colors[active] = shade(hits, dirs, mats, lighting)
    alpha = (part_map >= 0).float()
    depth = torch.zeros(view.shape[0], device=device)
    depth[active] = torch.where(hits.part >= 0, hits.t * z_factor, 0.0)

    edge = torch.nonzero(_edge_pixels(part_map.reshape(n_views, height, width)).reshape(-1)).squeeze(1)
    if supersample > 1 and edge.numel():
        offsets = (torch.arange(supersample, device=device) + 0.5) / supersample
        oy, ox = torch.meshgrid(offsets, offsets, indexing="ij")
        k = supersample * supersample
        sub_view = view[edge].repeat_interleave(k)
        sub_col, sub_row = col[edge].repeat_interleave(k), row[edge].repeat_interleave(k)
        s_origins, s_dirs, s_z = _rays(cameras, sub_view, sub_col + ox.reshape(-1).repeat(edge.numel()),
                                       sub_row + oy.reshape(-1).repeat(edge.numel()))
        s_hits = trace(parts, s_origins, s_dirs, tiles.pairs(tiles.key(sub_view, sub_col, sub_row)))
        s_hit = (s_hits.part >= 0).float().reshape(-1, k)
        s_colors = shade(s_hits, s_dirs, mats, lighting).reshape(-1, k, 3)
        coverage = s_hit.mean(1)
        colors[edge] = (s_colors * s_hit[..., None]).mean(1) + (1 - coverage[:, None])  # on white
        alpha[edge] = coverage
        s_depth = (torch.where(s_hits.part >= 0, s_hits.t, 0.0) * s_z).reshape(-1, k)
        mean_depth = (s_depth * s_hit).sum(1) / s_hit.sum(1).clamp_min(1)
        depth[edge] = torch.where(coverage > 0.5, mean_depth, 0.0)

    def image(x: Tensor, channels: int) -> Tensor:
        return x.reshape(n_views, height, width, channels).permute(0, 3, 1, 2).contiguous()

    return RenderedViews(rgb=image(colors, 3), alpha=image(alpha, 1), depth=image(depth, 1))


def spiral_elevation_range(domain: str) -> tuple[float, float]:
    """Elevations (degrees, positive = above) of the novel-view spiral: the official renders' ranges."""
    return (-45.0, 33.75) if domain == "avatar" else (-60.0, 58.8)


def novel_view_indices(spec: ObjectSpec, n_novel: int) -> list[int]:
    """Indices into ``spiral_cameras(N_SPIRAL)`` of the object's novel views (deterministic per seed)."""
    if not 0 <= n_novel <= N_SPIRAL:
        raise ValueError(f"n_novel must be in [0, {N_SPIRAL}], got {n_novel}")
    rng = np.random.default_rng([spec.seed, 7])
    return sorted(int(i) for i in rng.choice(N_SPIRAL, size=n_novel, replace=False))


def object_cameras(spec: ObjectSpec, size: int, n_novel: int = 8) -> tuple[Cameras, list[str]]:
    """Cameras of one object's views (4 targets, then ``n_novel`` spiral views) and their roles.

    Target view 0 is the input (context) view. Roles are "target" or "novel". The spiral covers
    elevations -60..58.8 degrees for objects and -45..33.75 for avatars, as the official pose files.
    """
    targets = target_cameras(size).c2w_gl
    spiral = spiral_cameras(N_SPIRAL, size, elevation_range=spiral_elevation_range(spec.domain))
    novel = spiral.c2w_gl[novel_view_indices(spec, n_novel)]
    c2w = torch.cat([targets, novel], dim=0)
    return Cameras(c2w_gl=c2w, width=size, height=size), ["target"] * N_TARGETS + ["novel"] * n_novel

"""Ray casting of part lists: analytic ray-primitive intersection, sphere tracing for torus/round box.

All rays are traced at once. Candidate (ray, part) pairs come from the caller's culling (screen tiles
in ``procedural.render_object``) or from testing every part's bounding ball; each pair is then clipped
by the part's bounding box in its own frame, the survivors are intersected exactly, grouped by kind,
and the nearest hit per ray wins (a union of the parts; on exact ties the later part). Everything is
float32 and follows the device of the rays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .shapes import KINDS, Part

_INF = float("inf")
_SDF_STEPS = 40  # sphere-tracing iterations (torus, round box), active rays compacted every 4
_SDF_EPS = 3e-4  # hit threshold in world units (the object spans ~1)


@dataclass(frozen=True)
class PartTensors:
    """The parts of one object packed as tensors."""

    kinds: Tensor  # [P] long, index into KINDS
    params: Tensor  # [P, 4]
    centers: Tensor  # [P, 3] world
    rotations: Tensor  # [P, 3, 3] part-to-world
    radii: Tensor  # [P] bounding-ball radii
    half_extents: Tensor  # [P, 3] bounding boxes in the part frames

    @classmethod
    def from_parts(cls, parts: tuple[Part, ...], device=None) -> "PartTensors":
        if not parts:
            raise ValueError("an object needs at least one part")
        f32 = dict(dtype=torch.float32, device=device)
        return cls(
            kinds=torch.tensor([KINDS.index(p.kind) for p in parts], dtype=torch.long, device=device),
            params=torch.tensor(np.array([p.params for p in parts]), **f32),
            centers=torch.tensor(np.array([p.center for p in parts]), **f32),
            rotations=torch.tensor(np.array([p.rotation for p in parts]), **f32),
            radii=torch.tensor([p.bounding_radius() for p in parts], **f32) * 1.001 + 1e-4,
            half_extents=torch.tensor(np.array([p.half_extents() for p in parts]), **f32) * 1.001 + 1e-4,
        )


@dataclass(frozen=True)
class Hits:
    t: Tensor  # [R] distance along the unit ray, inf where nothing was hit
    part: Tensor  # [R] long, index of the part hit, -1 where nothing was hit
    normals: Tensor  # [R, 3] unit world normals (zeros where nothing was hit)
    local_points: Tensor  # [R, 3] hit points in the hit part's frame (for patterns)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


def _safe(x: Tensor) -> Tensor:
    """x with magnitudes below 1e-12 pushed away from zero (for divisions)."""
    return torch.where(x.abs() < 1e-12, torch.full_like(x, 1e-12), x)


def _first_root(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Roots of a t^2 + 2 b t + c = 0 (a > 0): (near, far, real)."""
    disc = b * b - a * c
    sq = disc.clamp_min(0).sqrt()
    return (-b - sq) / a, (-b + sq) / a, disc > 0


def _ellipsoid(o: Tensor, d: Tensor, prm: Tensor) -> tuple[Tensor, Tensor]:
    radii, cut = prm[:, :3], prm[:, 3]
    os_, ds = o / radii, d / radii
    t0, t1, real = _first_root(_dot(ds, ds), _dot(os_, ds), _dot(os_, os_) - 1)
    p0 = o + t0[:, None] * d
    on_shell = p0[:, 1] >= cut
    t_plane = (cut - o[:, 1]) / _safe(d[:, 1])
    on_cap = ~on_shell & (d[:, 1] > 0) & (t_plane >= t0) & (t_plane <= t1)
    t = torch.where(on_shell, t0, torch.where(on_cap, t_plane, torch.full_like(t0, _INF)))
    t = torch.where(real & (t > 0), t, torch.full_like(t, _INF))
    p = o + t.nan_to_num(0, 0, 0)[:, None] * d
    cap_normal = torch.tensor([0.0, -1.0, 0.0], device=o.device).expand_as(p)
    normals = torch.where(on_shell[:, None], p / (radii * radii), cap_normal)
    return t, normals


def _box(o: Tensor, d: Tensor, prm: Tensor) -> tuple[Tensor, Tensor]:
    half = prm[:, :3]
    inv = 1.0 / _safe(d)
    ta, tb = (-half - o) * inv, (half - o) * inv
    t_in, axis = torch.minimum(ta, tb).max(-1)
    t_out = torch.maximum(ta, tb).min(-1).values
    t = torch.where((t_in < t_out) & (t_in > 0), t_in, torch.full_like(t_in, _INF))
    normals = torch.zeros_like(o).scatter_(1, axis[:, None], -torch.sign(d.gather(1, axis[:, None])))
    return t, normals


def _frustum(o: Tensor, d: Tensor, prm: Tensor) -> tuple[Tensor, Tensor]:
    h, r0, r1 = prm[:, 0], prm[:, 1], prm[:, 2]
    mid, k = (r0 + r1) / 2, (r1 - r0) / (2 * h)
    ox, oy, oz, dx, dy, dz = o[:, 0], o[:, 1], o[:, 2], d[:, 0], d[:, 1], d[:, 2]
    u = mid + k * oy
    a = dx * dx + dz * dz - k * k * dy * dy
    a = torch.where(a.abs() < 1e-9, torch.full_like(a, 1e-9), a)
    b = ox * dx + oz * dz - k * u * dy
    c = ox * ox + oz * oz - u * u
    disc = b * b - a * c
    sq = disc.clamp_min(0).sqrt()
    candidates = []
    for t_side in ((-b - sq) / a, (-b + sq) / a):
        y = oy + t_side * dy
        candidates.append(torch.where((disc > 0) & (y.abs() <= h), t_side, _INF))
    for y_cap, r_cap in ((-h, r0), (h, r1)):
        t_cap = (y_cap - oy) / _safe(dy)
        x, z = ox + t_cap * dx, oz + t_cap * dz
        candidates.append(torch.where(x * x + z * z <= r_cap * r_cap, t_cap, _INF))
    stacked = torch.stack(candidates, dim=-1)
    stacked = torch.where(stacked > 0, stacked, _INF)
    t, which = stacked.min(-1)
    p = o + t.nan_to_num(0, 0, 0)[:, None] * d
    side = torch.stack([p[:, 0], -k * (mid + k * p[:, 1]), p[:, 2]], dim=-1)
    cap = torch.zeros_like(p)
    cap[:, 1] = torch.where(which == 2, -1.0, 1.0)
    return t, torch.where((which < 2)[:, None], side, cap)


def _capsule(o: Tensor, d: Tensor, prm: Tensor) -> tuple[Tensor, Tensor]:
    h, r = prm[:, 0], prm[:, 1]
    a = _safe(d[:, 0] ** 2 + d[:, 2] ** 2)
    b = o[:, 0] * d[:, 0] + o[:, 2] * d[:, 2]
    c = o[:, 0] ** 2 + o[:, 2] ** 2 - r * r
    t_side, _, real = _first_root(a, b, c)
    y = o[:, 1] + t_side * d[:, 1]
    candidates = [torch.where(real & (y.abs() <= h), t_side, _INF)]
    for sign in (-1.0, 1.0):
        oc = o.clone()
        oc[:, 1] -= sign * h
        t_ball, _, real = _first_root(_dot(d, d), _dot(oc, d), _dot(oc, oc) - r * r)
        candidates.append(torch.where(real, t_ball, _INF))
    t = torch.stack(candidates, -1).min(-1).values
    t = torch.where(t > 0, t, _INF)
    p = o + t.nan_to_num(0, 0, 0)[:, None] * d
    axis_point = torch.zeros_like(p)
    axis_point[:, 1] = torch.maximum(torch.minimum(p[:, 1], h), -h)
    return t, p - axis_point


def _torus_sdf(p: Tensor, prm: Tensor) -> Tensor:
    q = torch.hypot(p[:, 0], p[:, 2]) - prm[:, 0]
    return torch.hypot(q, p[:, 1]) - prm[:, 1]


def _torus_normal(p: Tensor, prm: Tensor) -> Tensor:
    ring = torch.hypot(p[:, 0], p[:, 2]).clamp_min(1e-9)
    scale = 1 - prm[:, 0] / ring
    return torch.stack([p[:, 0] * scale, p[:, 1], p[:, 2] * scale], dim=-1)


def _round_box_sdf(p: Tensor, prm: Tensor) -> Tensor:
    q = p.abs() - (prm[:, :3] - prm[:, 3:4])
    return q.clamp_min(0).norm(dim=-1) + q.max(-1).values.clamp_max(0) - prm[:, 3]


def _round_box_normal(p: Tensor, prm: Tensor) -> Tensor:
    q = p.abs() - (prm[:, :3] - prm[:, 3:4])
    outside = q.clamp_min(0)
    inside = torch.zeros_like(q).scatter_(1, q.argmax(-1, keepdim=True), 1.0)  # nearest face when inside
    grad = torch.where((outside.sum(-1) > 0)[:, None], outside, inside)
    return grad * torch.where(p >= 0, 1.0, -1.0)


def _sphere_trace(sdf, normal_fn):
    """Intersection by sphere tracing from the part box entry ``t0`` to its exit ``t1``."""

    def intersect(o: Tensor, d: Tensor, prm: Tensor, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
        t_hit = torch.full_like(t0, _INF)
        index = torch.arange(t0.shape[0], device=t0.device)
        t, o_a, d_a, prm_a, t1_a = t0.clamp_min(0), o, d, prm, t1
        for step in range(_SDF_STEPS):
            dist = sdf(o_a + t[:, None] * d_a, prm_a)
            t = t + dist
            if step % 4 == 3 or step == _SDF_STEPS - 1:
                done = dist < (_SDF_EPS if step < _SDF_STEPS - 1 else 4 * _SDF_EPS)
                t_hit[index[done]] = t[done]
                keep = torch.nonzero(~done & (t < t1_a)).squeeze(1)
                index, t, o_a, d_a, prm_a, t1_a = index[keep], t[keep], o_a[keep], d_a[keep], prm_a[keep], t1_a[keep]
                if not index.numel():
                    break
        t_hit = torch.where(t_hit <= t1, t_hit, _INF)
        p = o + t_hit.nan_to_num(0, 0, 0)[:, None] * d
        return t_hit, normal_fn(p, prm)

    return intersect


def _slab(o: Tensor, d: Tensor, half: Tensor) -> tuple[Tensor, Tensor]:
    """Entry and exit distances of rays through boxes [-half, half] (local frame)."""
    inv = 1.0 / _safe(d)
    ta, tb = (-half - o) * inv, (half - o) * inv
    return torch.minimum(ta, tb).max(-1).values, torch.maximum(ta, tb).min(-1).values


_INTERSECT = {
    "ellipsoid": _ellipsoid,
    "box": _box,
    "frustum": _frustum,
    "capsule": _capsule,
    "torus": _sphere_trace(_torus_sdf, _torus_normal),
    "round_box": _sphere_trace(_round_box_sdf, _round_box_normal),
}
_SPHERE_TRACED = ("torus", "round_box")


def candidate_pairs(parts: PartTensors, origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
    """(ray, part) index pairs whose ray passes through the part's bounding ball in front of the origin."""
    b = dirs @ parts.centers.T - _dot(dirs, origins)[:, None]  # [R, P] distance to the closest approach
    oc2 = (parts.centers * parts.centers).sum(-1) - 2 * origins @ parts.centers.T + _dot(origins, origins)[:, None]
    mask = (oc2 - b * b <= parts.radii * parts.radii) & (b + parts.radii > 0)
    rays, part_ids = torch.nonzero(mask, as_tuple=True)
    return rays, part_ids


def trace(parts: PartTensors, origins: Tensor, dirs: Tensor, pairs: tuple[Tensor, Tensor] | None = None) -> Hits:
    """Nearest hit of each ray. origins [R, 3], dirs [R, 3] unit, world frame.

    ``pairs`` (ray indices, part indices), if given, lists the only parts each ray may hit (a
    conservative culling done by the caller); otherwise every part's bounding ball is tested.
    """
    if origins.shape != dirs.shape or dirs.ndim != 2 or dirs.shape[1] != 3:
        raise ValueError(f"origins and dirs must both be [R, 3], got {tuple(origins.shape)}, {tuple(dirs.shape)}")
    n_rays = dirs.shape[0]
    rays, part_ids = candidate_pairs(parts, origins, dirs) if pairs is None else pairs
    rot = parts.rotations[part_ids]
    o_local = torch.einsum("ni,nij->nj", origins[rays] - parts.centers[part_ids], rot)
    d_local = torch.einsum("ni,nij->nj", dirs[rays], rot)
    t_enter, t_exit = _slab(o_local, d_local, parts.half_extents[part_ids])
    keep = torch.nonzero((t_enter <= t_exit) & (t_exit > 0)).squeeze(1)
    rays, part_ids, rot, o_local, d_local = rays[keep], part_ids[keep], rot[keep], o_local[keep], d_local[keep]
    t_enter, t_exit = t_enter[keep], t_exit[keep]
    t_pair = torch.full((rays.shape[0],), _INF, device=dirs.device)
    n_pair = torch.zeros_like(o_local)
    kinds = parts.kinds[part_ids]
    for k, name in enumerate(KINDS):
        sel = torch.nonzero(kinds == k).squeeze(1)
        if not sel.numel():
            continue
        args = (o_local[sel], d_local[sel], parts.params[part_ids[sel]])
        if name in _SPHERE_TRACED:
            args += (t_enter[sel], t_exit[sel])
        t_pair[sel], n_pair[sel] = _INTERSECT[name](*args)
    t_pair = t_pair.nan_to_num(_INF, _INF, _INF)
    t_ray = torch.full((n_rays,), _INF, device=dirs.device).scatter_reduce(0, rays, t_pair, "amin")
    winner = (t_pair == t_ray[rays]) & torch.isfinite(t_pair)
    pair_index = torch.arange(rays.shape[0], device=dirs.device)
    best = torch.full((n_rays,), -1, dtype=torch.long, device=dirs.device)
    best = best.scatter_reduce(0, rays[winner], pair_index[winner], "amax")  # ties: the later part
    hit = best >= 0
    won = best[hit]
    part = torch.full((n_rays,), -1, dtype=torch.long, device=dirs.device)
    part[hit] = part_ids[won]
    normals = torch.zeros_like(dirs)
    local_n = torch.nn.functional.normalize(n_pair[won], dim=-1)
    normals[hit] = torch.einsum("nij,nj->ni", rot[won], local_n)
    local_points = torch.zeros_like(dirs)
    local_points[hit] = o_local[won] + t_pair[won, None] * d_local[won]
    return Hits(t=t_ray, part=part, normals=normals, local_points=local_points)

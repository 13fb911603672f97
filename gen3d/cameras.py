"""Cameras: the only place camera math lives (spec sections 8, 9 and 12).

Conventions (all defined here, used everywhere):

* World frame of the Gaussians: OpenGL style, +y up, object at the origin, cameras on a sphere of
  radius 1.5. It is *relative*: the input image's viewpoint sits at (0, 0, 1.5) looking down -z.
* ``c2w_gl``: camera-to-world 4x4 with OpenGL camera axes (x right, y up, camera looks down -z).
  ``c2w_cv``: the same pose with OpenCV camera axes (x right, y down, looks down +z).
* ``orbit_camera(elevation, azimuth, radius)`` follows kiui: position r·(cos e·sin a, -sin e, cos e·cos a),
  so azimuth 0 is +z, azimuth 90 is +x and a *negative* elevation puts the camera above the object.
* Blender pose files (``132_{i}_RT.txt``) are z-up camera-to-world matrices; ``BLENDER_TO_GL`` changes
  the world axes, and ``relative_transform`` re-expresses every pose relative to the input view.
* Intrinsics come from the vertical field of view (49.1°): f = H / (2·tan(fovy/2)), principal point
  exactly (W/2, H/2), pixel (column i, row j) has its centre at (i + 0.5, j + 0.5).
* Pose arithmetic is float32, as in the official code (golden tolerance 1e-6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

FOVY_DEG = 49.1
CAM_RADIUS = 1.5
ZNEAR = 0.5
ZFAR = 2.5
INPUT_SIZE = 256  # reconstructor input / 2D model image size
OUTPUT_SIZE = 512  # official render size

# Official view sets, as indices of the 132-view pose files (spec 8.5).
TARGET_FILES = (108, 116, 124, 100)  # the 4 target views: relative azimuth 0, 90, 180, 270
OUTPUT_FILES = tuple(range(100, 132))  # the 32 turntable views, azimuth -90 + 11.25·k
TSDF_QUALITY_VIEWS = {"low": 24, "high": 72}

# Blender (z up) world -> OpenGL (y up) world, left-multiplied onto camera-to-world matrices.
BLENDER_TO_GL = torch.tensor(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))  # right-multiplied: flips camera y and z


def _check_poses(c2w: Tensor, name: str = "c2w") -> None:
    if c2w.ndim < 2 or tuple(c2w.shape[-2:]) != (4, 4):
        raise ValueError(f"{name} must have shape [..., 4, 4], got {tuple(c2w.shape)}")


# ----------------------------------------------------------------------------------------------- poses
def look_at_gl(campos: Tensor, target: Tensor | None = None, up: Sequence[float] = (0.0, 1.0, 0.0)) -> Tensor:
    """OpenGL camera-to-world [..., 4, 4] for cameras at ``campos`` [..., 3] looking at ``target``."""
    campos = torch.as_tensor(campos, dtype=torch.float32)
    target = torch.zeros_like(campos) if target is None else torch.as_tensor(target, dtype=campos.dtype).expand_as(campos)
    up_vec = torch.tensor(up, dtype=campos.dtype, device=campos.device).expand_as(campos)
    forward = torch.nn.functional.normalize(campos - target, dim=-1)  # camera +z points away from target
    right = torch.nn.functional.normalize(torch.linalg.cross(up_vec, forward), dim=-1)
    true_up = torch.nn.functional.normalize(torch.linalg.cross(forward, right), dim=-1)
    c2w = torch.zeros(campos.shape[:-1] + (4, 4), dtype=campos.dtype, device=campos.device)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2] = right, true_up, forward
    c2w[..., :3, 3] = campos
    c2w[..., 3, 3] = 1.0
    return c2w


def orbit_camera(elevation_deg, azimuth_deg, radius: float = CAM_RADIUS) -> Tensor:
    """kiui orbit camera(s): OpenGL c2w [..., 4, 4]; negative elevation = above the object."""
    e = torch.deg2rad(torch.as_tensor(elevation_deg, dtype=torch.float64))
    a = torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=torch.float64))
    e, a = torch.broadcast_tensors(e, a)
    campos = radius * torch.stack([e.cos() * a.sin(), -e.sin(), e.cos() * a.cos()], dim=-1)
    return look_at_gl(campos.float())


def ring_file_pose(index: int | Sequence[int], radius: float = CAM_RADIUS) -> Tensor:
    """Blender c2w [..., 4, 4] of pose file ``132_{index}_RT.txt`` for the ring files 100..131.

    Those files hold cameras at elevation 0, Blender azimuth φ = -90° + 11.25°·(index - 100); the
    values are computed in float64 and cast, as the official code casts the text values.
    """
    idx = torch.as_tensor(index, dtype=torch.float64)
    if ((idx < 100) | (idx > 131)).any():
        raise ValueError(f"ring pose files are 100..131, got {index}")
    phi = torch.deg2rad(-90.0 + 11.25 * (idx - 100))
    c, s = phi.cos(), phi.sin()
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    rows = [
        [-s, zero, c, radius * c],
        [c, zero, s, radius * s],
        [zero, one, zero, zero],
        [zero, zero, zero, one],
    ]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2).float()


def read_pose_file(path: str | Path) -> Tensor:
    """Read a ``*_RT.txt`` pose file (16 numbers, row-major 4x4 Blender c2w) as float32."""
    values = [float(v) for v in Path(path).read_text().split()]
    if len(values) != 16:
        raise ValueError(f"{path}: expected 16 numbers, found {len(values)}")
    return torch.tensor(values, dtype=torch.float64).reshape(4, 4).float()


def relative_transform(c2w_blender_ref: Tensor, radius: float = CAM_RADIUS) -> Tensor:
    """T = Translate(0, 0, r) @ inverse(BLENDER_TO_GL @ ref): puts the reference view at (0, 0, r)."""
    translate = torch.eye(4, dtype=torch.float32)
    translate[2, 3] = radius
    return translate @ torch.inverse(BLENDER_TO_GL @ c2w_blender_ref.float())


def blender_to_relative_gl(c2w_blender: Tensor, c2w_blender_ref: Tensor, radius: float = CAM_RADIUS) -> Tensor:
    """Blender c2w [..., 4, 4] -> OpenGL c2w in the frame relative to ``c2w_blender_ref``."""
    _check_poses(c2w_blender, "c2w_blender")
    return relative_transform(c2w_blender_ref, radius) @ BLENDER_TO_GL @ c2w_blender.float()


def gl_to_cv(c2w_gl: Tensor) -> Tensor:
    """OpenGL camera axes -> OpenCV camera axes (negate rotation columns 1 and 2); an involution."""
    _check_poses(c2w_gl)
    return c2w_gl @ _GL_TO_CV.to(c2w_gl)


cv_to_gl = gl_to_cv


# ------------------------------------------------------------------------------------------ intrinsics
def tan_half_fov(fovy_deg: float = FOVY_DEG) -> float:
    return math.tan(0.5 * math.radians(fovy_deg))


def focal_length(size: int, fovy_deg: float = FOVY_DEG) -> float:
    """Focal length in pixels for an image ``size`` pixels high: 280.222 at 256, 560.444 at 512."""
    return size / (2.0 * tan_half_fov(fovy_deg))


def projection_matrix(fovy_deg: float = FOVY_DEG, near: float = ZNEAR, far: float = ZFAR) -> Tensor:
    """The official projection, already transposed (row-vector convention: ``view_proj = view @ P``)."""
    proj = torch.zeros(4, 4, dtype=torch.float32)
    proj[0, 0] = proj[1, 1] = 1.0 / tan_half_fov(fovy_deg)
    proj[2, 2] = (far + near) / (far - near)
    proj[3, 2] = -(far * near) / (far - near)
    proj[2, 3] = 1.0
    return proj


# --------------------------------------------------------------------------------------------- Cameras
@dataclass(frozen=True)
class Cameras:
    """A batch of V pinhole cameras that share one image size and field of view."""

    c2w_gl: Tensor  # [V, 4, 4] OpenGL camera-to-world, Gaussian world frame
    width: int = INPUT_SIZE
    height: int = INPUT_SIZE
    fovy_deg: float = FOVY_DEG
    near: float = ZNEAR
    far: float = ZFAR

    def __post_init__(self) -> None:
        if self.c2w_gl.ndim != 3 or tuple(self.c2w_gl.shape[1:]) != (4, 4):
            raise ValueError(f"Cameras.c2w_gl must be [V, 4, 4], got {tuple(self.c2w_gl.shape)}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    @classmethod
    def from_w2c_cv(cls, w2c_cv: Tensor, **kwargs) -> "Cameras":
        """Build from OpenCV world-to-camera matrices [V, 4, 4] (e.g. a rasterizer's view matrix^T)."""
        _check_poses(w2c_cv, "w2c_cv")
        return cls(c2w_gl=cv_to_gl(torch.inverse(w2c_cv)), **kwargs)

    def __len__(self) -> int:
        return self.c2w_gl.shape[0]

    def __getitem__(self, index) -> "Cameras":
        c2w = self.c2w_gl[index]
        return replace(self, c2w_gl=c2w if c2w.ndim == 3 else c2w[None])

    def to(self, device=None, dtype=None) -> "Cameras":
        return replace(self, c2w_gl=self.c2w_gl.to(device=device, dtype=dtype))

    def resized(self, width: int, height: int | None = None) -> "Cameras":
        """Same poses and field of view, another image size."""
        return replace(self, width=width, height=width if height is None else height)

    @property
    def device(self) -> torch.device:
        return self.c2w_gl.device

    # Intrinsics. tan(fovx/2) follows from square pixels; equal to tan(fovy/2) for square images.
    @property
    def tan_half_fovy(self) -> float:
        return tan_half_fov(self.fovy_deg)

    @property
    def tan_half_fovx(self) -> float:
        return self.tan_half_fovy * self.width / self.height

    @property
    def fx(self) -> float:
        return self.width / (2.0 * self.tan_half_fovx)

    @property
    def fy(self) -> float:
        return self.height / (2.0 * self.tan_half_fovy)

    @property
    def cx(self) -> float:
        return self.width / 2.0

    @property
    def cy(self) -> float:
        return self.height / 2.0

    def intrinsics(self) -> Tensor:
        """K [3, 3] in pixels (OpenCV convention, principal point at the image centre)."""
        return torch.tensor([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]],
                            dtype=self.c2w_gl.dtype, device=self.device)

    # Extrinsics.
    def c2w_cv(self) -> Tensor:
        return gl_to_cv(self.c2w_gl)

    def w2c_cv(self) -> Tensor:
        """[V, 4, 4] world-to-camera, OpenCV axes (x right, y down, z forward = depth)."""
        return torch.inverse(self.c2w_cv())

    def centers(self) -> Tensor:
        """[V, 3] camera positions in the world frame."""
        return self.c2w_gl[:, :3, 3]

    # The official rasterizer's inputs (spec 8.2), for interop and golden tests.
    def view_matrix(self) -> Tensor:
        """``cam_view`` [V, 4, 4]: inverse(c2w_cv) transposed (column-major 3DGS convention)."""
        return self.w2c_cv().transpose(1, 2)

    def view_proj_matrix(self) -> Tensor:
        """``cam_view_proj`` [V, 4, 4] = view_matrix @ projection_matrix."""
        return self.view_matrix() @ projection_matrix(self.fovy_deg, self.near, self.far).to(self.c2w_gl)

    def official_campos(self) -> Tensor:
        """``cam_pos`` [V, 3] as the official code passes it: the *negated* camera centre (unused there)."""
        return -self.c2w_gl[:, :3, 3]

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """World points [N, 3] -> pixel coordinates [V, N, 2] (x = column, y = row, centres at +0.5) and depth [V, N]."""
        w2c = self.w2c_cv()
        cam = points.to(w2c) @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]
        z = cam[..., 2]
        uv = torch.stack([self.fx * cam[..., 0] / z + self.cx, self.fy * cam[..., 1] / z + self.cy], dim=-1)
        return uv, z

    def unproject(self, depth: Tensor) -> Tensor:
        """Depth maps [V, H, W] of camera z (OpenCV, as ``project`` returns) -> world points [V, H, W, 3].

        Pixel centres at +0.5, the inverse of ``project``; a depth of 0 lands on the camera centre.
        """
        V, H, W = depth.shape
        device, dtype = depth.device, self.c2w_gl.dtype
        cols = (torch.arange(W, device=device, dtype=dtype) + 0.5 - self.cx) / self.fx
        rows = (torch.arange(H, device=device, dtype=dtype) + 0.5 - self.cy) / self.fy
        y, x = torch.meshgrid(rows, cols, indexing="ij")
        cam = torch.stack([x, y, torch.ones_like(x)], dim=-1) * depth.to(dtype)[..., None]  # [V, H, W, 3]
        c2w = self.c2w_cv().to(device)
        return torch.einsum("vij,vhwj->vhwi", c2w[:, :3, :3], cam) + c2w[:, None, None, :3, 3]

    def plucker(self) -> Tensor:
        """Plücker ray embedding [V, 6, H, W] of these cameras (see ``plucker_rays``)."""
        return plucker_rays(self.c2w_gl, self.height, self.width, self.fovy_deg)


def plucker_rays(c2w_gl: Tensor, height: int, width: int, fovy_deg: float = FOVY_DEG) -> Tensor:
    """Plücker embedding [V, 6, H, W] = (o × d, d), moment first, channel-first (spec 8.4).

    Pixel (column i, row j) -> camera direction ((i + 0.5 - W/2)/f, -(j + 0.5 - H/2)/f, -1) with
    f = (H/2)/tan(fovy/2), rotated by c2w and normalised; o is the camera centre. An all-zero pose
    (the context view) gives all-zero rays.
    """
    _check_poses(c2w_gl, "c2w_gl")
    c2w_gl = c2w_gl.reshape(-1, 4, 4)
    device, dtype = c2w_gl.device, c2w_gl.dtype
    focal = 0.5 * height / tan_half_fov(fovy_deg)
    cols = (torch.arange(width, device=device, dtype=dtype) - width * 0.5 + 0.5) / focal
    rows = (torch.arange(height, device=device, dtype=dtype) - height * 0.5 + 0.5) / focal
    y, x = torch.meshgrid(-rows, cols, indexing="ij")
    dirs_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1).reshape(-1, 3)  # [H*W, 3]
    dirs = torch.nn.functional.normalize(dirs_cam @ c2w_gl[:, :3, :3].transpose(1, 2), dim=-1)  # [V, HW, 3]
    origins = c2w_gl[:, None, :3, 3].expand_as(dirs)
    rays = torch.cat([torch.linalg.cross(origins, dirs, dim=-1), dirs], dim=-1)  # [V, HW, 6]
    return rays.transpose(1, 2).reshape(-1, 6, height, width).contiguous()


# ------------------------------------------------------------------------------------- official view sets
def reference_pose() -> Tensor:
    """Blender c2w of the input view (file 108) that defines the relative frame."""
    return ring_file_pose(TARGET_FILES[0])


def file_cameras(indices: Sequence[int], size: int) -> Cameras:
    """Relative OpenGL cameras of the ring pose files ``indices`` (100..131) at ``size``² pixels."""
    c2w = blender_to_relative_gl(ring_file_pose(list(indices)), reference_pose())
    return Cameras(c2w_gl=c2w, width=size, height=size)


def target_cameras(size: int = INPUT_SIZE) -> Cameras:
    """The 4 target views (relative azimuth 0, 90, 180, 270 at elevation 0, radius 1.5)."""
    return file_cameras(TARGET_FILES, size)


def output_cameras(size: int = OUTPUT_SIZE) -> Cameras:
    """The 32 turntable output views: azimuth -90 + 11.25·k, k = 0..31 (view 8 is the front)."""
    return file_cameras(OUTPUT_FILES, size)


def unet_camera_vectors(dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """[5, 16] camera input of the 2D UNet (spec 8.6).

    Rows 0-3: Blender c2w of files 108, 116, 124, 100 with the translation scaled to unit length,
    flattened row-major; row 4: zeros for the context frame.
    """
    poses = ring_file_pose(list(TARGET_FILES))
    poses[:, :3, 3] = poses[:, :3, 3] / poses[:, :3, 3].norm(dim=-1, keepdim=True)
    vectors = torch.cat([poses.reshape(4, 16), torch.zeros(1, 16)], dim=0)
    return vectors.to(device=device, dtype=dtype)


def orbit_cameras(elevations_deg, azimuths_deg, size: int, radius: float = CAM_RADIUS) -> Cameras:
    """Cameras from kiui orbit angles (negative elevation = above), in the relative frame."""
    return Cameras(c2w_gl=orbit_camera(elevations_deg, azimuths_deg, radius).reshape(-1, 4, 4), width=size, height=size)


def tsdf_cameras(n_views: int | str = "low", size: int = OUTPUT_SIZE, radius: float = CAM_RADIUS) -> Cameras:
    """The official mesh-extraction views (spec 12): three turns, elevation -45° -> 45° (positive = above).

    ``n_views`` is a count or "low" (24) / "high" (72). Each camera is an ImageDream look-at at
    r·(cos e·sin a, sin e, cos e·cos a), then the official chain, whose net effect is a left
    multiplication by the rotation that maps the input view onto the relative frame.
    """
    n = TSDF_QUALITY_VIEWS[n_views] if isinstance(n_views, str) else int(n_views)
    if n < 1:
        raise ValueError(f"n_views must be positive, got {n_views}")
    e = torch.deg2rad(torch.arange(n, dtype=torch.float64) * (90.0 / n) - 45.0)
    a = torch.deg2rad(torch.arange(n, dtype=torch.float64) * (1080.0 / n))
    campos = radius * torch.stack([e.cos() * a.sin(), e.sin(), e.cos() * a.cos()], dim=-1)
    rotation = relative_transform(reference_pose(), radius)
    rotation[:3, 3] = 0.0  # pure rotation for the ring files (translation is 0 up to rounding)
    return Cameras(c2w_gl=rotation @ look_at_gl(campos.float()), width=size, height=size)


def spiral_cameras(n_views: int = 100, size: int = INPUT_SIZE, elevation_range=(-60.0, 58.8), turns: float = 4.0,
                   radius: float = CAM_RADIUS) -> Cameras:
    """A spiral of views around the object for novel-view supervision and evaluation.

    Elevation rises linearly over ``elevation_range`` (degrees, positive = above) while the azimuth
    makes ``turns`` full turns. The official training renders use such a spiral (pose files 0-99);
    its exact turn count is not published, so this one is gen3d's own choice.
    """
    k = torch.arange(n_views, dtype=torch.float64)
    elevation = elevation_range[0] + (elevation_range[1] - elevation_range[0]) * k / max(n_views - 1, 1)
    azimuth = 360.0 * turns * k / n_views
    return orbit_cameras(-elevation, azimuth, size, radius)  # kiui sign: negative = above

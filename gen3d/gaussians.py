"""3D Gaussians: named fields, the official activations, and their files (.ply, .splat).

Packed layout of the reconstructor (spec section 7), 14 channels per Gaussian:
    0-2 xyz (clamped to [-1, 1]) | 3 opacity (sigmoid) | 4-6 scale (0.1·softplus) |
    7-10 quaternion w, x, y, z (L2-normalised) | 11-13 RGB (0.5·tanh + 0.5)
``activate`` maps the network's raw output to that packed form; ``Gaussians.from_packed`` names the
fields. Quaternions are real-part first (wxyz) everywhere in gen3d.

.ply files use the standard 3DGS "compatible" layout of spec 11.1 (x y z f_dc_0..2 opacity
scale_0..2 rot_0..3, binary little endian, logit opacity, log scale, SH-DC colour), which gradio's
Model3D splat viewer and common 3DGS tools read. .splat is the 32-byte-per-Gaussian web format.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SH_C0 = 0.28209479177387814
PLY_OPACITY_THRESHOLD = 0.005
PACKED_CHANNELS = 14
PLY_PROPERTIES = (
    "x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
)


def activate(raw: Tensor) -> Tensor:
    """Raw reconstructor output [..., N, 14] -> packed activated Gaussians [..., N, 14] (official)."""
    if raw.shape[-1] != PACKED_CHANNELS:
        raise ValueError(f"raw Gaussians must have {PACKED_CHANNELS} channels last, got {tuple(raw.shape)}")
    xyz = raw[..., 0:3].clamp(-1, 1)
    opacity = torch.sigmoid(raw[..., 3:4])
    scale = 0.1 * F.softplus(raw[..., 4:7])
    rotation = F.normalize(raw[..., 7:11], dim=-1)
    rgb = 0.5 * torch.tanh(raw[..., 11:14]) + 0.5
    return torch.cat([xyz, opacity, scale, rotation, rgb], dim=-1)


@dataclass
class Gaussians:
    """A set of 3D Gaussians, optionally with leading batch dimensions ``...``."""

    means: Tensor  # [..., N, 3] centres, relative OpenGL world frame (+y up)
    quats: Tensor  # [..., N, 4] unit quaternions, w x y z
    scales: Tensor  # [..., N, 3] standard deviations along the local axes (> 0)
    opacities: Tensor  # [..., N] in (0, 1)
    colors: Tensor  # [..., N, 3] RGB in [0, 1]

    def __post_init__(self) -> None:
        lead = tuple(self.means.shape[:-1])
        expected = {"means": lead + (3,), "quats": lead + (4,), "scales": lead + (3,), "opacities": lead,
                    "colors": lead + (3,)}
        for name, shape in expected.items():
            actual = tuple(getattr(self, name).shape)
            if actual != shape:
                raise ValueError(f"Gaussians.{name} must have shape {list(shape)}, got {list(actual)}")

    # -- construction and conversion
    @classmethod
    def from_packed(cls, packed: Tensor) -> "Gaussians":
        """From activated [..., N, 14] (the official reconstructor's returned tensor)."""
        if packed.shape[-1] != PACKED_CHANNELS:
            raise ValueError(f"packed Gaussians must be [..., N, {PACKED_CHANNELS}], got {tuple(packed.shape)}")
        return cls(means=packed[..., 0:3], opacities=packed[..., 3], scales=packed[..., 4:7],
                   quats=packed[..., 7:11], colors=packed[..., 11:14])

    @classmethod
    def from_raw(cls, raw: Tensor) -> "Gaussians":
        """From the network's pre-activation [..., N, 14] through the official activations."""
        return cls.from_packed(activate(raw))

    def to_packed(self) -> Tensor:
        return torch.cat([self.means, self.opacities[..., None], self.scales, self.quats, self.colors], dim=-1)

    def _map(self, fn) -> "Gaussians":
        return Gaussians(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def __len__(self) -> int:
        return self.means.shape[-2]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape[:-2])

    def __getitem__(self, index) -> "Gaussians":
        """Index the leading batch dimension(s): ``gaussians[0]`` is the first scene."""
        if not self.batch_shape:
            raise IndexError("these Gaussians have no batch dimension; use .select(mask) for a subset")
        return self._map(lambda t: t[index])

    def select(self, index: Tensor) -> "Gaussians":
        """Subset of an unbatched set by boolean mask or index tensor over N."""
        if self.batch_shape:
            raise ValueError("select() takes unbatched Gaussians; index the batch first")
        return self._map(lambda t: t[index])

    def to(self, device=None, dtype=None) -> "Gaussians":
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def detach(self) -> "Gaussians":
        return self._map(Tensor.detach)

    def cpu(self) -> "Gaussians":
        return self.to(device="cpu")

    @property
    def device(self) -> torch.device:
        return self.means.device

    def prune(self, min_opacity: float = PLY_OPACITY_THRESHOLD) -> "Gaussians":
        """Keep Gaussians with opacity >= ``min_opacity`` (the official .ply rule)."""
        return self.select(self.opacities >= min_opacity)

    def stats(self) -> dict[str, float]:
        """Cheap summary numbers for logs and the app (unbatched)."""
        g = self.detach().to(dtype=torch.float32)
        return {
            "count": float(len(g)),
            "visible_fraction": float((g.opacities >= PLY_OPACITY_THRESHOLD).float().mean()) if len(g) else 0.0,
            "mean_opacity": float(g.opacities.mean()) if len(g) else 0.0,
            "mean_scale": float(g.scales.mean()) if len(g) else 0.0,
            "extent": float(g.means.abs().max()) if len(g) else 0.0,
        }


def rotate_x_180(gaussians: Gaussians) -> Gaussians:
    """The same scene turned 180° about the x axis (y and z negated), for viewers whose up is -y.

    gradio's Model3D splat viewer (like most 3DGS viewers, which follow COLMAP/OpenCV worlds) shows
    +y pointing down; gen3d's world is +y up, so files meant for such a viewer go through this.
    Rotations compose as q' = (0, 1, 0, 0) ⊗ q (wxyz).
    """
    w, x, y, z = gaussians.quats.unbind(-1)
    quats = torch.stack([-x, w, -z, y], dim=-1)  # (0, 1, 0, 0) ⊗ (w, x, y, z)
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=gaussians.means.dtype, device=gaussians.means.device)
    return Gaussians(means=gaussians.means * flip, quats=quats, scales=gaussians.scales,
                     opacities=gaussians.opacities, colors=gaussians.colors)


# ------------------------------------------------------------------------------------------------ .ply
def save_ply(gaussians: Gaussians, path: str | os.PathLike, min_opacity: float = PLY_OPACITY_THRESHOLD) -> Path:
    """Write the official 3DGS-compatible .ply (spec 11.1) after pruning by opacity."""
    from plyfile import PlyData, PlyElement

    g = gaussians.detach().to(device="cpu", dtype=torch.float32)
    if g.batch_shape:
        raise ValueError(f"save_ply takes one scene, got batch shape {g.batch_shape}")
    if min_opacity > 0:
        g = g.prune(min_opacity)
    p = g.opacities.clamp(1e-6, 1 - 1e-6)
    columns = [
        g.means,
        (g.colors - 0.5) / SH_C0,
        torch.log(p / (1 - p))[:, None],
        torch.log(g.scales + 1e-8),
        F.normalize(g.quats, dim=-1),
    ]
    data = torch.cat(columns, dim=-1).numpy().astype(np.float32)
    vertex = np.empty(len(data), dtype=[(name, "f4") for name in PLY_PROPERTIES])
    for i, name in enumerate(PLY_PROPERTIES):
        vertex[name] = data[:, i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<").write(str(path))
    return path


def load_ply(path: str | os.PathLike) -> Gaussians:
    """Read a 3DGS .ply (the layout above; extra properties such as f_rest_* or normals are ignored)."""
    from plyfile import PlyData

    try:
        ply = PlyData.read(str(path))
        vertex = ply["vertex"]
    except Exception as err:  # plyfile raises several types for malformed files
        raise ValueError(f"{path} is not a readable .ply file: {err}") from err
    names = set(vertex.data.dtype.names or ())
    missing = [n for n in PLY_PROPERTIES if n not in names]
    if missing:
        raise ValueError(f"{path} is not a Gaussian-splat .ply: missing properties {missing}")
    data = torch.from_numpy(np.stack([np.asarray(vertex[n], dtype=np.float32) for n in PLY_PROPERTIES], axis=-1))
    return Gaussians(
        means=data[:, 0:3],
        colors=data[:, 3:6] * SH_C0 + 0.5,
        opacities=torch.sigmoid(data[:, 6]),
        scales=torch.exp(data[:, 7:10]),
        quats=F.normalize(data[:, 10:14], dim=-1),
    )


# ---------------------------------------------------------------------------------------------- .splat
def save_splat(gaussians: Gaussians, path: str | os.PathLike, min_opacity: float = PLY_OPACITY_THRESHOLD) -> Path:
    """Write the 32-byte .splat web format (antimatter15/splat and compatible viewers).

    Per Gaussian: position 3×f32, scale 3×f32, RGBA 4×u8, quaternion 4×u8 (wxyz mapped to
    round(q·128 + 128)), sorted by decreasing opacity × volume as those viewers expect.
    """
    g = gaussians.detach().to(device="cpu", dtype=torch.float32)
    if g.batch_shape:
        raise ValueError(f"save_splat takes one scene, got batch shape {g.batch_shape}")
    if min_opacity > 0:
        g = g.prune(min_opacity)
    order = torch.argsort(-(g.opacities * g.scales.prod(dim=-1)), stable=True)
    g = g.select(order)
    record = np.zeros(len(g), dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    record["pos"] = g.means.numpy()
    record["scale"] = g.scales.numpy()
    rgba = torch.cat([g.colors, g.opacities[:, None]], dim=-1)
    record["rgba"] = (rgba.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    record["rot"] = (F.normalize(g.quats, dim=-1) * 128 + 128).round().clamp(0, 255).to(torch.uint8).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(record.tobytes())
    return path


def load_splat(path: str | os.PathLike) -> Gaussians:
    """Read a .splat file (quantised colours, opacities and rotations)."""
    raw = Path(path).read_bytes()
    if len(raw) % 32:
        raise ValueError(f"{path} is not a .splat file: {len(raw)} bytes is not a multiple of 32")
    record = np.frombuffer(raw, dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    rgba = torch.from_numpy(record["rgba"].astype(np.float32) / 255.0)
    quats = (torch.from_numpy(record["rot"].astype(np.float32)) - 128.0) / 128.0
    return Gaussians(
        means=torch.from_numpy(record["pos"].copy()),
        scales=torch.from_numpy(record["scale"].copy()),
        colors=rgba[:, :3],
        opacities=rgba[:, 3],
        quats=F.normalize(quats, dim=-1),
    )


def random_gaussians(n: int, generator: torch.Generator, extent: float = 0.5, scale_range=(0.005, 0.05)) -> Gaussians:
    """Random Gaussians in a cube of half-size ``extent`` (tests and benchmarks)."""
    means = (torch.rand(n, 3, generator=generator) * 2 - 1) * extent
    quats = F.normalize(torch.randn(n, 4, generator=generator), dim=-1)
    lo, hi = np.log(scale_range[0]), np.log(scale_range[1])
    scales = torch.exp(torch.rand(n, 3, generator=generator) * (hi - lo) + lo)
    opacities = torch.rand(n, generator=generator) * 0.9 + 0.05
    colors = torch.rand(n, 3, generator=generator)
    return Gaussians(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors)


__all__ = ["Gaussians", "activate", "rotate_x_180", "save_ply", "load_ply", "save_splat", "load_splat", "random_gaussians",
           "SH_C0", "PLY_OPACITY_THRESHOLD"]

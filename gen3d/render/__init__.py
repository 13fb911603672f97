"""Rendering Gaussians: ``render(gaussians, cameras, ...) -> RenderOutput``.

Two evaluation modes:

* ``"gof"`` (default): the official Gen-3Diffusion rasterizer, the Gaussian Opacity Fields fork of
  diff-gaussian-rasterization (spec 8.3): each Gaussian is evaluated at the maximum of the 3D Gaussian
  along the pixel's ray, with GOF's opacity factor and t* <= 0.2 skip; outputs colour, alpha, median
  depth and normals. This is what the checkpoints were trained with.
* ``"ewa"``: vanilla 3DGS (projected 2D conic of Σ₂ + 0.3·I); depth is the centre camera depth under
  the same median rule; no normals (``RenderOutput.normal`` is None).

Two backends:

* ``"torch"``: pure PyTorch, tiled like the CUDA (16x16 tiles, centre-depth order, the official
  thresholds), any device and dtype, differentiable; matches the golden renders (float32 tolerances).
* ``"gsplat"``: ``gsplat.rasterization`` (EWA only) when CUDA and gsplat's compiled extension exist.
  ``backend="auto"`` picks it for mode "ewa" on CUDA inputs and the torch backend otherwise.

Conventions: cameras from ``gen3d.cameras`` (OpenGL c2w, intrinsics from fovy, pixel centres at +0.5,
principal point W/2, H/2); outputs channels-first; camera-frame quantities (normals) in OpenCV axes
(x right, y down, z forward); depth in camera z (not distance along the ray).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from gen3d.cameras import Cameras
from gen3d.gaussians import Gaussians
from gen3d.render.torch_backend import TorchRasterConfig, rasterize

MODES = ("gof", "ewa")
BACKENDS = ("auto", "torch", "gsplat")


@dataclass
class RenderOutput:
    """Renders of V views (all channels-first)."""

    color: Tensor  # [V, 3, H, W] in [0, 1]: sum w·c + T·background, clamped as the official gof.py
    alpha: Tensor  # [V, 1, H, W] sum of weights w (= 1 - T), no background
    depth: Tensor  # [V, 1, H, W] camera z of the Gaussian that takes T to <= 0.5 (GOF: at its ray maximum
    #                t*; EWA: its centre), the last one added if T stays above 0.5; 0 where nothing was added.
    #                gsplat backend: expected depth sum(w·z)/sum(w) instead.
    normal: Tensor | None  # [V, 3, H, W] GOF only: sum w·n, n = -Σ_v⁻¹d/|Σ_v⁻¹d| (OpenCV camera axes,
    #                        not normalised); None in EWA mode or with normals=False
    radii: Tensor  # [V, N] int32 screen-space radius in pixels, 0 where culled
    n_contrib: Tensor | None  # [V, H, W] int32 Gaussians composited per pixel (None for gsplat)
    backend: str  # the backend that actually ran: "torch" or "gsplat"
    mode: str  # "gof" or "ewa"


def render(
    gaussians: Gaussians,  # unbatched: means [N, 3], quats [N, 4] wxyz, scales [N, 3], opacities [N], colors [N, 3]
    cameras: Cameras,  # V cameras sharing one image size
    background: Sequence[float] | Tensor = (1.0, 1.0, 1.0),  # RGB in [0, 1]
    mode: str = "gof",
    backend: str = "auto",
    normals: bool = True,  # GOF: compute the normal map (about a third of the cost; False skips it)
    config: TorchRasterConfig | None = None,  # torch backend tuning (sub-tile, chunk, memory); results unchanged
) -> RenderOutput:
    """Render unbatched Gaussians into every view of ``cameras``; see the module docstring."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _check_gaussians(gaussians)
    ref = gaussians.means
    background = torch.as_tensor(background, dtype=ref.dtype, device=ref.device).reshape(-1)
    if background.shape != (3,):
        raise ValueError(f"background must have 3 values (RGB), got shape {tuple(background.shape)}")
    cameras = cameras.to(device=ref.device, dtype=ref.dtype)

    chosen = _choose_backend(backend, mode, ref.device)
    if chosen == "gsplat":
        from gen3d.render.gsplat_backend import rasterize_gsplat

        out = rasterize_gsplat(gaussians, cameras, background)
        return RenderOutput(color=out["color"], alpha=out["alpha"], depth=out["depth"], normal=None,
                            radii=out["radii"], n_contrib=None, backend="gsplat", mode=mode)

    if ref.is_meta:  # meta tensors carry shapes only (checks of the official sizes): outputs of the right shapes
        return _meta_output(len(gaussians), cameras, mode, normals)
    res = rasterize(gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.colors,
                    cameras.w2c_cv(), cameras.width, cameras.height, cameras.fx, cameras.fy,
                    cameras.tan_half_fovx, cameras.tan_half_fovy, background, mode=mode, normals=normals,
                    config=config)
    return RenderOutput(color=res.color, alpha=res.alpha, depth=res.depth, normal=res.normal, radii=res.radii,
                        n_contrib=res.n_contrib, backend="torch", mode=mode)


def _meta_output(n: int, cameras: Cameras, mode: str, normals: bool) -> RenderOutput:
    V, H, W = len(cameras), cameras.height, cameras.width
    meta = dict(device="meta", dtype=cameras.c2w_gl.dtype)
    return RenderOutput(color=torch.empty(V, 3, H, W, **meta), alpha=torch.empty(V, 1, H, W, **meta),
                        depth=torch.empty(V, 1, H, W, **meta),
                        normal=torch.empty(V, 3, H, W, **meta) if mode == "gof" and normals else None,
                        radii=torch.empty(V, n, device="meta", dtype=torch.int32),
                        n_contrib=torch.empty(V, H, W, device="meta", dtype=torch.int32), backend="torch", mode=mode)


def _check_gaussians(gaussians: Gaussians) -> None:
    if not isinstance(gaussians, Gaussians):
        raise ValueError(f"render takes a gen3d.gaussians.Gaussians, got {type(gaussians).__name__}")
    if gaussians.batch_shape:
        raise ValueError(f"render takes unbatched Gaussians (means [N, 3]), got means of shape "
                         f"{tuple(gaussians.means.shape)}; render each scene of the batch separately")
    ref = gaussians.means
    for name in ("quats", "scales", "opacities", "colors"):
        t = getattr(gaussians, name)
        if t.dtype != ref.dtype or t.device != ref.device:
            raise ValueError(f"Gaussians.{name} is {t.dtype} on {t.device}, means is {ref.dtype} on {ref.device}")
    if not ref.is_floating_point():
        raise ValueError(f"Gaussians must be floating point, got {ref.dtype}")


def _choose_backend(backend: str, mode: str, device: torch.device) -> str:
    from gen3d.render.gsplat_backend import gsplat_available

    if backend == "torch":
        return "torch"
    if backend == "gsplat":
        if mode != "ewa":
            raise ValueError("backend='gsplat' renders mode='ewa' only; the official GOF evaluation needs "
                             "backend='torch' (or 'auto')")
        if device.type != "cuda" or not gsplat_available():
            raise RuntimeError(f"backend='gsplat' needs CUDA tensors and gsplat's compiled CUDA extension "
                               f"(inputs are on {device}; gsplat usable: {gsplat_available()}); "
                               f"use backend='torch' or 'auto'")
        return "gsplat"
    return "gsplat" if mode == "ewa" and device.type == "cuda" and gsplat_available() else "torch"


__all__ = ["render", "RenderOutput", "TorchRasterConfig", "MODES", "BACKENDS"]

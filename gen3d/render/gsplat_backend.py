"""gsplat backend (CUDA only): vanilla 3DGS EWA rendering through ``gsplat.rasterization``.

gsplat is imported lazily, only here and only when asked; ``import gen3d.render`` never imports it.
On a machine without CUDA this module is never reached except for ``gsplat_available()``, which then
answers False without importing gsplat's extension loader (which would try a JIT CUDA build).

Settings chosen to match the golden EWA mode as far as gsplat allows: eps2d = 0.3 (the 0.3 px²
dilation), near_plane = 0.2 (the z <= 0.2 cull), classic rasterization, tile size 16, the same
pixel-centre convention (K with cx = W/2, cy = H/2), the same alpha thresholds (1/255, 0.99, 1e-4).
Differences: gsplat has no median depth, so ``depth`` is its expected depth sum(w·z)/sum(w); its
tile-intersection radius and numerical details may differ slightly; no ``n_contrib``; no normals.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from gen3d.cameras import Cameras
from gen3d.gaussians import Gaussians
from gen3d.render.project import EWA_DILATION, NEAR_Z, TILE


@functools.lru_cache(maxsize=1)
def gsplat_available() -> bool:
    """True when CUDA is available and gsplat's compiled CUDA extension loads (checked once)."""
    if not torch.cuda.is_available():
        return False
    try:
        from gsplat.cuda._backend import _C  # ImportError about gsplat_cuda when it cannot be built
    except (ImportError, OSError, RuntimeError):
        return False
    return _C is not None


def rasterize_gsplat(gaussians: Gaussians, cameras: Cameras, background: Tensor) -> dict[str, Tensor]:
    """EWA render of unbatched Gaussians on CUDA; returns color/alpha/depth [V, C, H, W] and radii [V, N]."""
    from gsplat import rasterization

    num_views = len(cameras)
    ks = cameras.intrinsics()[None].expand(num_views, 3, 3).contiguous()
    colors, alphas, meta = rasterization(
        gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.colors,
        viewmats=cameras.w2c_cv(), Ks=ks, width=cameras.width, height=cameras.height,
        near_plane=NEAR_Z, eps2d=EWA_DILATION, packed=False, tile_size=TILE, render_mode="RGB+ED",
        rasterize_mode="classic", backgrounds=background[None].expand(num_views, 3).contiguous())
    colors = colors.permute(0, 3, 1, 2)  # [V, 4, H, W]: RGB + expected depth
    radii = meta["radii"]
    if radii.ndim == 3:  # gsplat >= 1.5 returns per-axis radii [V, N, 2]
        radii = radii.amax(dim=-1)
    return {"color": colors[:, :3].clamp(0.0, 1.0), "alpha": alphas.permute(0, 3, 1, 2),
            "depth": colors[:, 3:4], "radii": radii.to(torch.int32)}


__all__ = ["gsplat_available", "rasterize_gsplat"]

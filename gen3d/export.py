"""Writers for what a run produces: image grids, turntable and trajectory videos, metrics.

Images are [N, 3, H, W] floats in [0, 1] on entry (gen3d's convention) and uint8 [H, W, 3] arrays
on disk. Videos go through imageio with its bundled ffmpeg (H.264, yuv420p, even sizes).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from gen3d.gaussians import Gaussians


def to_uint8(images: Tensor) -> np.ndarray:
    """[..., 3, H, W] in [0, 1] -> uint8 [..., H, W, 3]."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return arr.movedim(-3, -1).numpy()


def image_grid(images: Tensor, columns: int, pad: int = 0, pad_value: float = 1.0) -> Tensor:
    """[N, 3, H, W] -> one image [3, rows·H, columns·W] (row-major, blank cells white)."""
    if images.ndim != 4:
        raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
    n, c, h, w = images.shape
    rows = math.ceil(n / columns)
    grid = torch.full((c, rows * (h + pad) - pad, columns * (w + pad) - pad), pad_value, dtype=images.dtype)
    for i in range(n):
        r, col = divmod(i, columns)
        grid[:, r * (h + pad): r * (h + pad) + h, col * (w + pad): col * (w + pad) + w] = images[i].cpu()
    return grid


def save_image(image: Tensor, path: str | os.PathLike) -> Path:
    """[3, H, W] in [0, 1] -> PNG."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image)).save(path)
    return path


def write_video(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: int = 12) -> Path:
    """uint8 [H, W, 3] frames -> .mp4 (H.264). Odd sizes are padded to even with white."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(str(path), fps=fps, codec="libx264", quality=7, macro_block_size=1,
                            pixelformat="yuv420p") as writer:
        for frame in frames:
            h, w = frame.shape[:2]
            if h % 2 or w % 2:
                frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=255)
            writer.append_data(frame)
    return path


def render_views(gaussians: Gaussians, cameras, mode: str = "gof", chunk: int = 8) -> Tensor:
    """Render unbatched Gaussians at every camera, a few views at a time -> [V, 3, H, W] in [0, 1]."""
    from gen3d.render import render

    out = [render(gaussians, cameras[i: i + chunk], mode=mode, normals=False).color.detach().cpu()
           for i in range(0, len(cameras), chunk)]
    return torch.cat(out)


def turntable_cameras(n_frames: int = 48, size: int = 256, elevation_deg: float = -10.0):
    """A full turn around the object starting at the input view (kiui elevation: negative = above)."""
    from gen3d.cameras import orbit_cameras

    azimuths = torch.arange(n_frames, dtype=torch.float64) * (360.0 / n_frames)
    return orbit_cameras(torch.full_like(azimuths, elevation_deg), azimuths, size)


def trajectory_frame(x0_tilde: Tensor, x0_hat: Tensor) -> np.ndarray:
    """One video frame: the 2D estimates x0_tilde [V, 3, H, W] above the 3D renders x0_hat."""
    views = x0_tilde.shape[0]
    return to_uint8(image_grid(torch.cat([x0_tilde, x0_hat]), columns=views, pad=2))


def write_metrics(metrics: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return path


def summarize_trajectory(records: Sequence) -> dict:
    """Per-step measures of a sampler run (what metrics.json and the app's chart hold)."""
    return {
        "t": [r.t for r in records],
        "alpha_bar": [r.alpha_bar for r in records],
        "guided": [r.guided for r in records],
        "psnr_2d_vs_3d": [[round(float(v), 3) for v in r.psnr] for r in records],
        "mean_psnr_2d_vs_3d": [round(float(r.psnr.mean()), 3) for r in records],
        "seconds": [round(r.seconds, 4) for r in records],
        "gaussians": [r.gaussian_stats for r in records[-1:]],
    }

"""Optional depth refinement for mesh extraction: predicted normals + bilateral normal integration (spec 12).

The official ``infer_mesh.py`` refines each rendered depth map before fusing it:

1. A normal map is predicted from the render (composited on white, masked, normalised with mean and
   std 0.5) by PIFuHD's front-normal network, a pix2pixHD ``GlobalGenerator`` (3 -> 3 channels, 64
   filters, 4 downsamplings, 9 residual blocks, reflection padding, tanh) whose weights are the
   ``netG.netF.*`` entries of ``model_state_dict`` in ``pifuhd.pt``.
2. The depth is refined by perspective bilateral normal integration (BiNI, Cao et al. 2022) in
   log-depth, with the rendered depth as a prior (λ = 1e4, k = 2, up to 150 iterations, tolerance 1e-4;
   conjugate gradients with up to 5000 iterations and tolerance 1e-3).

Normalisation layers: the official code builds the generator with BatchNorm layers, loads no weights
into them (the PIFuHD checkpoint was trained with parameter-free InstanceNorm and holds none) and never
switches the network to eval mode, so on its batches of one image BatchNorm normalises each channel by
the image's own mean and variance: exactly ``InstanceNorm2d(affine=False)``, which is what is built
here [inferred from the code]. Norm-layer entries in a file are therefore ignored.

Weights: safetensors only; gen3d never unpickles. ``pifuhd.pt`` (a pickle, in the Hub repository
yuxuanx/gen3diffusion) must be converted once by the user, in a trusted environment, e.g. with this
one line (it keeps only the ``netG.netF.`` tensors):

    python -c "import argparse, torch; from safetensors.torch import save_file; torch.serialization.add_safe_globals([argparse.Namespace]); sd = torch.load('pifuhd.pt', map_location='cpu', weights_only=True)['model_state_dict']; save_file({k: v.contiguous() for k, v in sd.items() if k.startswith('netG.netF.')}, 'pifuhd_netF.safetensors')"

Normal convention of the network: camera frame with x right, y up, z towards the viewer (the axes the
official integration code assumes [inferred]); ``predict_normals`` returns OpenCV camera normals
(x right, y down, z forward), pointing towards the camera on visible surfaces.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from gen3d.weights import WeightsError, load_state_dict_checked, read_safetensors

NETF_PREFIX = "netG.netF."
OFFICIAL_FOCAL = 560.4441528320312  # the official integration's K (512² renders)
CONVERSION_HINT = (
    "convert it once, in a trusted environment, with: python -c \"import argparse, torch; from safetensors.torch "
    "import save_file; torch.serialization.add_safe_globals([argparse.Namespace]); sd = torch.load('pifuhd.pt', "
    "map_location='cpu', weights_only=True)['model_state_dict']; save_file({k: v.contiguous() for k, v in "
    "sd.items() if k.startswith('netG.netF.')}, 'pifuhd_netF.safetensors')\""
)


# ------------------------------------------------------------------------------------------ network
class ResnetBlock(nn.Module):
    """x + (pad, conv3, norm, ReLU, pad, conv3, norm): keys conv_block.1 and conv_block.5."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


class GlobalGenerator(nn.Module):
    """pix2pixHD's global generator; parameter names match PIFuHD's ``netG.netF.*`` without the prefix.

    ``model`` is one Sequential: stem (pad 3, conv 7, norm, ReLU), ``n_downsampling`` stride-2 convs
    (each doubling the channels), ``n_blocks`` residual blocks, as many stride-2 transposed convs, and a
    head (pad 3, conv 7, tanh). Input [B, 3, H, W] in [-1, 1], H and W multiples of 2^n_downsampling;
    output [B, 3, H, W] in [-1, 1].
    """

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_downsampling: int = 4,
                 n_blocks: int = 9):
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7), nn.InstanceNorm2d(ngf),
                                   nn.ReLU(True)]
        for i in range(n_downsampling):
            c = ngf * 2 ** i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * c), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 2 ** n_downsampling) for _ in range(n_blocks)]
        for i in range(n_downsampling):
            c = ngf * 2 ** (n_downsampling - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(c // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.multiple = 2 ** n_downsampling

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def norm_prefixes(self) -> tuple[str, ...]:
        """Key prefixes of the normalisation layers (the official BatchNorm entries a file may carry)."""
        names = [name for name, m in self.named_modules() if isinstance(m, nn.InstanceNorm2d)]
        return tuple(f"{name}." for name in names)


def load_normal_net(path: str | os.PathLike, device: str | torch.device = "cpu", **architecture) -> GlobalGenerator:
    """A generator (official size unless ``architecture`` overrides ``GlobalGenerator``'s arguments)
    with weights from a .safetensors file: keys with or without the ``netG.netF.`` prefix; other PIFuHD
    sub-networks and norm-layer entries are ignored; anything else missing or mismatched raises.

    A pickled checkpoint (``pifuhd.pt``) is refused with a ``WeightsError`` that gives the conversion.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"normal-network weights not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    pickled = head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or head == b"PK\x03\x04"
    if pickled or path.suffix.lower() in (".pt", ".pth", ".ckpt", ".bin", ".pkl"):
        raise WeightsError(f"{path} is a pickled PyTorch checkpoint; gen3d loads safetensors only and never "
                           f"unpickles. {CONVERSION_HINT}")
    state = read_safetensors(path)
    if any(k.startswith(NETF_PREFIX) for k in state):
        state = {k[len(NETF_PREFIX):]: v for k, v in state.items() if k.startswith(NETF_PREFIX)}
    net = GlobalGenerator(**architecture)
    load_state_dict_checked(net, state, strict=True, ignore_prefixes=net.norm_prefixes(), source=str(path))
    return net.to(device).eval()


@torch.no_grad()
def predict_normals(net: GlobalGenerator, images: Tensor, mask: Tensor) -> Tensor:
    """Normals [V, 3, H, W] (OpenCV camera frame, unit length inside the mask, 0 outside).

    ``images`` [V, 3, H, W] in [0, 1] are renders over white and ``mask`` [V, H, W] the surface pixels;
    as officially, the network sees ``image · mask`` normalised to [-1, 1]. Images are padded (by
    reflection) to a multiple of the network's stride and cropped back.
    """
    if images.ndim != 4 or images.shape[1] != 3 or tuple(mask.shape) != (images.shape[0],) + tuple(images.shape[2:]):
        raise ValueError(f"images must be [V, 3, H, W] and mask [V, H, W]; got {tuple(images.shape)}, {tuple(mask.shape)}")
    height, width = images.shape[-2:]
    x = (images * mask[:, None] - 0.5) / 0.5
    pad_h, pad_w = (-height) % net.multiple, (-width) % net.multiple
    x = nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else x
    param = next(net.parameters())
    out = torch.cat([net(x[i: i + 1].to(param)) for i in range(len(x))])[..., :height, :width].to(images)
    normals = out * torch.tensor([1.0, -1.0, -1.0], dtype=out.dtype, device=out.device).view(1, 3, 1, 1)  # GL -> CV
    return nn.functional.normalize(normals, dim=1) * mask[:, None]


# ------------------------------------------------------------------------------------ integration
def integrate_normals(
    normals: np.ndarray,  # [H, W, 3] OpenCV camera normals (towards the camera on visible surfaces)
    depth: np.ndarray,  # [H, W] prior camera z (> 0 inside the mask)
    mask: np.ndarray,  # [H, W] bool pixels to solve for
    fx: float, fy: float, cx: float, cy: float,  # intrinsics, pixel centres at +0.5
    lambda_depth: float = 1e4,  # prior weight at the official focal length (scaled by (f / 560.44)²)
    k: float = 2.0,  # bilateral sharpness
    max_iter: int = 150,
    tol: float = 1e-4,  # stop when the energy changes by less than this fraction
    cg_max_iter: int = 5000,
    cg_tol: float = 1e-3,
) -> np.ndarray:
    """Perspective bilateral normal integration in log depth -> refined depth [H, W] (NaN outside the mask).

    With z̃ = log z and pixel offsets u = col + 0.5 - cx, v = row + 0.5 - cy, a surface with normal n
    satisfies ñ_u·∂z̃/∂u = -n_x and ñ_v·∂z̃/∂v = -n_y, where ñ_u = u·n_x + v·n_y·fx/fy + fx·n_z and
    ñ_v = u·n_x·fy/fx + v·n_y + fy·n_z. Each pixel has four one-sided versions of these (right, left,
    down, up); the two of an axis are weighted w and 1 - w with w = sigmoid(k·(d₋² - d₊²)) from the
    current one-sided differences, so the integration follows the smoother side across depth edges.
    Each iteration solves min Σ w·(A z̃ - b)² + λ·|z̃ - z̃_prior|² by Jacobi-preconditioned conjugate
    gradients. λ is given for the official 512² renders; the normal terms grow with f², so λ is scaled
    by (f / 560.44)² to keep the same balance at other sizes [inferred].
    """
    from scipy.sparse import csr_matrix, diags
    from scipy.sparse.linalg import cg

    height, width = mask.shape
    mask = mask & (depth > 0) & np.isfinite(depth)
    count = int(mask.sum())
    out = np.full((height, width), np.nan)
    if count == 0:
        return out
    index = np.full((height, width), -1, dtype=np.int64)
    index[mask] = np.arange(count)
    rows, cols = np.nonzero(mask)
    nx, ny, nz = (normals[rows, cols, i].astype(np.float64) for i in range(3))
    u, v = cols + 0.5 - cx, rows + 0.5 - cy
    n_u = u * nx + v * ny * fx / fy + fx * nz
    n_v = u * nx * fy / fx + v * ny + fy * nz

    def difference(d_row: int, d_col: int, coeff: np.ndarray, rhs: np.ndarray, forward: bool):
        """Rows coeff·(z̃[q] - z̃[p]) (forward) or coeff·(z̃[p] - z̃[q]) where q = p + offset is in the mask."""
        r, c = rows + d_row, cols + d_col
        ok = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        ok[ok] = mask[r[ok], c[ok]]
        p = np.nonzero(ok)[0]
        q = index[r[ok], c[ok]]
        sign = 1.0 if forward else -1.0
        data = np.concatenate([sign * coeff[p], -sign * coeff[p]])
        a = csr_matrix((data, (np.concatenate([p, p]), np.concatenate([q, p]))), shape=(count, count))
        return a, np.where(ok, rhs, 0.0)

    systems = [difference(0, 1, n_u, -nx, True), difference(0, -1, n_u, -nx, False),
               difference(1, 0, n_v, -ny, True), difference(-1, 0, n_v, -ny, False)]
    lam = lambda_depth * (0.5 * (fx + fy) / OFFICIAL_FOCAL) ** 2
    prior = np.log(depth[mask])
    z = prior.copy()
    weights = [np.full(count, 0.5) for _ in systems]

    def energy(z):
        return sum(float(w @ (a @ z - b) ** 2) for (a, b), w in zip(systems, weights)) + lam * float(((z - prior) ** 2).sum())

    current = energy(z)
    for _ in range(max_iter):
        lhs = diags(np.full(count, lam))
        rhs = lam * prior
        for (a, b), w in zip(systems, weights):
            aw = a.T.multiply(w)  # Aᵀ·W
            lhs = lhs + aw @ a
            rhs = rhs + aw @ b
        lhs = lhs.tocsr()
        jacobi = diags(1.0 / np.clip(lhs.diagonal(), 1e-5, None))
        z, _ = cg(lhs, rhs, x0=z, M=jacobi, maxiter=cg_max_iter, rtol=cg_tol)
        diffs = [a @ z for a, _ in systems]
        w_right = 1.0 / (1.0 + np.exp(-k * (diffs[1] ** 2 - diffs[0] ** 2)))
        w_down = 1.0 / (1.0 + np.exp(-k * (diffs[3] ** 2 - diffs[2] ** 2)))
        weights = [w_right, 1.0 - w_right, w_down, 1.0 - w_down]
        previous, current = current, energy(z)
        if abs(current - previous) <= tol * max(abs(previous), 1e-30):
            break
    out[mask] = np.exp(z)
    return out


# ---------------------------------------------------------------------------------------- refiner
class DepthRefiner:
    """``refiner(images_on_white, depth, mask, cameras) -> depth``: the official per-view refinement,
    as ``gen3d.mesh.render_depth_views`` calls it (networks on the Gaussians' device, integration on
    the CPU). Depth [V, H, W] is camera z, 0 outside the mask; pixels the integration leaves undefined
    become 0 (free space)."""

    def __init__(self, net: GlobalGenerator, **integration):
        self.net = net
        self.integration = integration

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str | torch.device = "cpu", **integration) -> "DepthRefiner":
        """The official-size network from a .safetensors file (see ``load_normal_net``)."""
        return cls(load_normal_net(path, device), **integration)

    def __call__(self, images: Tensor, depth: Tensor, mask: Tensor, cameras) -> Tensor:
        normals = predict_normals(self.net, images, mask).permute(0, 2, 3, 1).cpu().numpy()
        refined = []
        for v in range(depth.shape[0]):
            d = integrate_normals(normals[v], depth[v].cpu().numpy().astype(np.float64), mask[v].cpu().numpy(),
                                  cameras.fx, cameras.fy, cameras.cx, cameras.cy, **self.integration)
            refined.append(torch.from_numpy(np.nan_to_num(d, nan=0.0)))
        return torch.stack(refined).to(depth)


__all__ = ["GlobalGenerator", "load_normal_net", "predict_normals", "integrate_normals", "DepthRefiner",
           "NETF_PREFIX", "CONVERSION_HINT"]

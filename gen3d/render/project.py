"""Per-Gaussian, per-view preprocessing of the official rasterizer (spec 8.3; golden README section 5).

Everything here is [V, N] (views x Gaussians), vectorised, differentiable where it feeds the pixels,
and computed in the dtype and on the device of the inputs (float32 normally, as the CUDA).

* ``project`` reproduces preprocessCUDA: centre camera depth (the sort key), the z <= 0.2 cull, the
  2D EWA covariance with the 1.3·tanfov clamp in the Jacobian (GOF: no dilation; EWA: + 0.3 px²),
  the radius ceil(3·sqrt(lambda_max)), the 16x16-tile rectangle and GOF's opacity factor.
* ``footprint`` adds what the tiled backend needs beyond the CUDA: a conservative pixel box outside
  which alpha < 1/255 (so the Gaussian can be skipped there without changing any pixel) and whether
  the t* <= 0.2 test can trigger at all.

Pixel convention: column i, row j; the GOF ray is d = ((i + 0.5 - W/2)/fx, (j + 0.5 - H/2)/fy, 1) in
OpenCV camera axes, and the EWA centre (u, v) = (fx·x/z + W/2 - 0.5, fy·y/z + H/2 - 0.5) is compared
with (i, j): both put pixel centres at the same place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _f32(x: float) -> float:
    """The value of a CUDA float literal (e.g. 0.2f), exactly, as a Python float."""
    return float(torch.tensor(x, dtype=torch.float32))


# Constants of the CUDA rasterizer; float literals there are float32 (promoted exactly in float64 renders).
TILE = 16  # BLOCK_X = BLOCK_Y
NEAR_Z = _f32(0.2)  # in_frustum: cull if camera z <= 0.2f
TSTAR_MIN = 0.2  # GOF: skip a Gaussian at a pixel whose ray maximum t* <= 0.2 (a double comparison)
ALPHA_MIN = _f32(1.0 / 255.0)  # skip if alpha < 1/255f
ALPHA_MAX = _f32(0.99)  # alpha = min(0.99f, ...)
T_STOP = _f32(1e-4)  # stop before adding when T·(1 - alpha) < 1e-4f
EWA_DILATION = _f32(0.3)  # vanilla 3DGS low-pass filter (px²); GOF with kernel_size 0 has none
_JACOBIAN_CLAMP = _f32(1.3)


@dataclass
class Projection:
    """What preprocessCUDA computes for V views x N Gaussians (all [V, N, ...])."""

    mode: str  # "gof" or "ewa"
    means_cam: Tensor  # [V, N, 3] centres in OpenCV camera coordinates
    depths: Tensor  # [V, N] centre camera z: the sort key
    means2d: Tensor  # [V, N, 2] (u, v) pixel coordinates, pixel (i, j) centred at (i, j)
    cov2d: Tensor  # [V, N, 3] (xx, xy, yy) px², EWA: dilated by 0.3
    radii: Tensor  # [V, N] int32, ceil(3·sqrt(lambda_max)), 0 if culled
    tile_rects: Tensor  # [V, N, 4] int64 (x_min, y_min, x_max, y_max) in tiles, max exclusive
    visible: Tensor  # [V, N] bool: not culled (z, det or empty rectangle)
    opacities: Tensor  # [V, N] opacity · coef (GOF) or opacity (EWA)
    rot_cam: Tensor  # [V, N, 3, 3] R_g = R_c·R_q (Gaussian frame -> camera frame), quaternion used as given
    rot_q: Tensor  # [N, 3, 3] R_q
    view_rot: Tensor  # [V, 3, 3] R_c (world -> camera)
    scales: Tensor  # [N, 3]


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[..., 4] (w, x, y, z) -> [..., 3, 3], used as given (not renormalised), as the CUDA does."""
    w, x, y, z = quats.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def project(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, w2c: Tensor, width: int,
            height: int, fx: float, fy: float, tan_fovx: float, tan_fovy: float, mode: str) -> Projection:
    """preprocessCUDA for every view. ``w2c`` [V, 4, 4] is OpenCV world-to-camera."""
    rot_c, trans_c = w2c[:, :3, :3], w2c[:, :3, 3]
    means_cam = torch.einsum("vij,nj->vni", rot_c, means) + trans_c[:, None, :]
    x, y, z = means_cam.unbind(-1)
    in_front = z > NEAR_Z
    z_safe = torch.where(in_front, z, torch.ones_like(z))  # keeps culled entries finite (and their grads 0)

    rot_q = quat_to_rotmat(quats)
    rot_cam = per_view(rot_c, rot_q)  # [V, N, 3, 3]
    cov_cam = per_view(rot_c, scaled_gram(rot_q, scales * scales), rot_c)  # Sigma_v = R_c·R_q·S²·R_qᵀ·R_cᵀ

    # Jacobian of the perspective map at the (clamped) centre; rows [fx/z, 0, -fx·x/z²], [0, fy/z, -fy·y/z²].
    lim_x, lim_y = _JACOBIAN_CLAMP * tan_fovx, _JACOBIAN_CLAMP * tan_fovy
    tx = (x / z_safe).clamp(-lim_x, lim_x) * z_safe
    ty = (y / z_safe).clamp(-lim_y, lim_y) * z_safe
    j_x, j_y = fx / z_safe, fy / z_safe
    j_xz, j_yz = -fx * tx / (z_safe * z_safe), -fy * ty / (z_safe * z_safe)
    s = cov_cam
    dilation = EWA_DILATION if mode == "ewa" else 0.0
    cxx = j_x * j_x * s[..., 0, 0] + 2 * j_x * j_xz * s[..., 0, 2] + j_xz * j_xz * s[..., 2, 2] + dilation
    cxy = j_x * j_y * s[..., 0, 1] + j_x * j_yz * s[..., 0, 2] + j_xz * j_y * s[..., 1, 2] + j_xz * j_yz * s[..., 2, 2]
    cyy = j_y * j_y * s[..., 1, 1] + 2 * j_y * j_yz * s[..., 1, 2] + j_yz * j_yz * s[..., 2, 2] + dilation
    det = cxx * cyy - cxy * cxy

    if mode == "gof":
        # GOF (kernel_size 0): det clamped to 1e-6; coef = sqrt(det/(det+1e-6) + 1e-6), 0 if det <= 1e-6.
        det_c = det.clamp_min(1e-6)
        coef = torch.where(det > 1e-6, torch.sqrt(det_c / (det_c + 1e-6) + 1e-6), torch.zeros_like(det))
        opac = opacities[None, :] * coef
        det_ok = torch.ones_like(in_front)
        det_r = det_c
    else:
        opac = opacities[None, :].expand_as(det)
        det_ok = det != 0
        det_r = det

    with torch.no_grad():
        mid = 0.5 * (cxx + cyy)
        lam = mid + torch.sqrt((mid * mid - det_r).clamp_min(_f32(0.1)))
        radius = torch.ceil(3.0 * torch.sqrt(lam.clamp_min(0)))
        u = fx * x / z_safe + (0.5 * width - 0.5)
        v = fy * y / z_safe + (0.5 * height - 0.5)
        grid_x, grid_y = (width + TILE - 1) // TILE, (height + TILE - 1) // TILE
        rects = torch.stack([
            torch.floor((u - radius) / TILE).clamp(0, grid_x),
            torch.floor((v - radius) / TILE).clamp(0, grid_y),
            torch.floor((u + radius + TILE - 1) / TILE).clamp(0, grid_x),
            torch.floor((v + radius + TILE - 1) / TILE).clamp(0, grid_y),
        ], dim=-1).nan_to_num(0).long()
        nonempty = (rects[..., 2] > rects[..., 0]) & (rects[..., 3] > rects[..., 1])
        visible = in_front & det_ok & nonempty & torch.isfinite(radius)
        radii = torch.where(visible, radius, torch.zeros_like(radius)).to(torch.int32)
        rects = rects * visible[..., None]
    means2d = torch.stack([fx * x / z_safe + (0.5 * width - 0.5), fy * y / z_safe + (0.5 * height - 0.5)], dim=-1)
    return Projection(mode=mode, means_cam=means_cam, depths=z, means2d=means2d,
                      cov2d=torch.stack([cxx, cxy, cyy], dim=-1), radii=radii, tile_rects=rects,
                      visible=visible, opacities=opac, rot_cam=rot_cam, rot_q=rot_q, view_rot=rot_c,
                      scales=scales)


def per_view(rot_c: Tensor, mats: Tensor, rot_c_right: Tensor | None = None) -> Tensor:
    """R_c·M (and ·R_cᵀ if ``rot_c_right``) for view rotations [V, 3, 3] and matrices [N, 3, 3] -> [V, N, 3, 3].

    Written as a few large matrix products instead of V·N tiny ones.
    """
    num_views, n = rot_c.shape[0], mats.shape[0]
    left = (rot_c @ mats.permute(1, 0, 2).reshape(3, n * 3)).reshape(num_views, 3, n, 3).permute(0, 2, 1, 3)
    if rot_c_right is None:
        return left
    return (left.reshape(num_views, n * 3, 3) @ rot_c_right.transpose(1, 2)).reshape(num_views, n, 3, 3)


def scaled_gram(rot: Tensor, diag: Tensor) -> Tensor:
    """R·diag(d)·Rᵀ = sum_j d_j·r_j·r_jᵀ for [N, 3, 3] and [N, 3] (e.g. Sigma = R_q·S²·R_qᵀ)."""
    return sum(rot[:, :, j, None] * (rot[:, None, :, j] * diag[:, j, None, None]) for j in range(3))


def dot3(a: Tensor, b: Tensor) -> Tensor:
    """Sum over a last dimension of size 3, written out (torch reduces tiny dimensions slowly on CPU)."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def matvec3(mat: Tensor, vec: Tensor, transpose: bool = False) -> Tensor:
    """[..., 3, 3] (or its transpose) times [..., 3], written out."""
    cols = [mat[..., j, :] if transpose else mat[..., :, j] for j in range(3)]
    return cols[0] * vec[..., 0:1] + cols[1] * vec[..., 1:2] + cols[2] * vec[..., 2:3]


@torch.no_grad()
def footprint(proj: Projection, width: int, height: int, fx: float, fy: float) -> tuple[Tensor, Tensor, Tensor]:
    """Conservative pixel box of alpha >= 1/255 and the need for the t* test, per (view, Gaussian).

    Returns ``box`` [V, N, 4] float (i_min, j_min, i_max, j_max) in pixel indices, inclusive (may lie
    outside the image), ``draws`` [V, N] bool (visible and able to reach alpha >= 1/255 somewhere), and
    ``needs_tstar`` [V, N] bool (GOF: some pixel with alpha >= 1/255 may have t* <= 0.2).

    GOF: alpha >= 1/255 needs m <= r² = 2·ln(255·opacity'), i.e. the pixel's ray meets the ellipsoid
    (x - mu)ᵀ Sigma⁻¹ (x - mu) <= r². Its perspective outline is bounded by the tangent planes through
    the camera centre; for the plane with normal (1, 0, -(x0 + delta)), x0 = mu_x/mu_z, tangency gives
    delta²·(mu_z² - r²·S_zz) - 2·delta·r²·(x0·S_zz - S_xz) - r²·n0ᵀSigma·n0 = 0 with n0 = (1, 0, -x0),
    solved without cancellation. If the ellipsoid reaches z <= 0 the box is unbounded (tile rectangle).
    EWA: alpha >= 1/255 needs (d Σ₂⁻¹ d) <= r², a box of half-widths r·sqrt(Σ₂xx), r·sqrt(Σ₂yy).
    Margins (0.1 % on r², 0.01 px) absorb float32 rounding; the box only chooses where to evaluate.
    """
    op = proj.opacities.detach()
    draws = proj.visible & (op >= ALPHA_MIN * (1 - 1e-6))  # alpha <= opacity
    r2 = (2.0 * torch.log((op * 255.0).clamp_min(1.0))) * 1.001 + 1e-3
    big = float(4 * max(width, height))
    if proj.mode == "ewa":
        u, v = proj.means2d.detach().unbind(-1)
        cov = proj.cov2d.detach()
        hx, hy = torch.sqrt(r2 * cov[..., 0]), torch.sqrt(r2 * cov[..., 2])
        box = torch.stack([u - hx, v - hy, u + hx, v + hy], dim=-1)
        return box.nan_to_num(0).clamp(-big, big), draws, torch.zeros_like(draws)

    mu = proj.means_cam.detach()
    z = torch.where(proj.visible, mu[..., 2], torch.ones_like(mu[..., 2]))
    rs = proj.rot_cam.detach() * proj.scales.detach()[None, :, None, :]  # Sigma = rs·rsᵀ
    s_zz = dot3(rs[..., 2, :], rs[..., 2, :])
    a = z * z - r2 * s_zz
    bounded = a > 1e-3 * z * z
    a_safe = torch.where(bounded, a, torch.ones_like(a))
    lo_hi = []
    for axis, focal, size in ((0, fx, width), (1, fy, height)):
        c0 = mu[..., axis] / z
        n0_rs = rs[..., axis, :] - c0[..., None] * rs[..., 2, :]  # n0ᵀ·rs
        s_n0n0 = dot3(n0_rs, n0_rs)
        b = -r2 * dot3(n0_rs, rs[..., 2, :])  # r²·(c0·S_zz - S_az) = -r²·n0ᵀ Sigma e_z
        root = torch.sqrt(b * b + a_safe * r2 * s_n0n0)
        lo, hi = c0 + (b - root) / a_safe, c0 + (b + root) / a_safe
        centre = 0.5 * size - 0.5
        lo_px = torch.where(bounded, lo * focal + centre - 0.01, torch.full_like(lo, -big))
        hi_px = torch.where(bounded, hi * focal + centre + 0.01, torch.full_like(hi, big))
        lo_hi.append((lo_px.nan_to_num(-big).clamp(-big, big), hi_px.nan_to_num(big).clamp(-big, big)))
    box = torch.stack([lo_hi[0][0], lo_hi[1][0], lo_hi[0][1], lo_hi[1][1]], dim=-1)
    # The ray maximum lies inside that ellipsoid, so t* >= mu_z - r·sqrt(S_zz) wherever alpha >= 1/255.
    needs_tstar = draws & (z - torch.sqrt(r2 * s_zz) <= TSTAR_MIN * (1 + 1e-3) + 1e-4)
    return box, draws, needs_tstar


def gof_frame(proj: Projection) -> dict[str, Tensor]:
    """Per (view, Gaussian) quantities of the GOF ray-maximum evaluation (differentiable), [V, N, ...].

    In the Gaussian's scaled frame a ray t·d becomes t·d~ with d~ = M·d, M = S⁻¹·R_gᵀ, from the origin
    o~ = -M·mu. Split d~ along o^ = o~/|o~| and two unit vectors b1, b2 orthogonal to it:
    p = o^·d~ = (Mᵀo^)·d and e_k = b_k·d~ = (Mᵀb_k)·(d - d0), where d0 = mu/mu_z is the centre's ray
    (M·d0 is parallel to o~, so e_k vanishes there exactly). Then |d~|² = p² + e1² + e2², the
    cancellation-free minimum m = |o~ x d~|²/|d~|² = |o~|²·(e1² + e2²)/(p² + e1² + e2²) and the ray
    maximum t* = -(o~·d~)/|d~|² = -|o~|·p/(p² + e1² + e2²). All three are linear in the pixel position.
    """
    mu = proj.means_cam
    z = torch.where(proj.visible, mu[..., 2], torch.ones_like(mu[..., 2]))
    inv_s = 1.0 / proj.scales[None]  # [1, N, 3]
    o_t = -matvec3(proj.rot_cam, mu, transpose=True) * inv_s  # o~ = -R_gᵀ·mu / s
    o_norm = torch.sqrt(dot3(o_t, o_t)).clamp_min(1e-20)
    o_hat = o_t / o_norm[..., None]
    b1, b2 = _orthonormal_basis(o_hat)

    def to_cam(vec_frame: Tensor) -> Tensor:  # Mᵀ·vec = R_g·(vec / s)
        return matvec3(proj.rot_cam, vec_frame * inv_s)

    g_p, g_1, g_2 = to_cam(o_hat), to_cam(b1), to_cam(b2)
    # Sigma_v⁻¹ = R_g·S⁻²·R_gᵀ (= Mᵀ·M with M = S⁻¹·R_gᵀ): normal n ∝ -Sigma_v⁻¹·d
    sigma_inv = per_view(proj.view_rot, scaled_gram(proj.rot_q, inv_s[0] * inv_s[0]), proj.view_rot)
    return {"o_norm": o_norm, "x0": mu[..., 0] / z, "y0": mu[..., 1] / z, "g_p": g_p, "g_1": g_1, "g_2": g_2,
            "sigma_inv": sigma_inv}


def _orthonormal_basis(n: Tensor) -> tuple[Tensor, Tensor]:
    """Two unit vectors completing the unit vector ``n`` [..., 3] to an orthonormal basis (Duff et al. 2017)."""
    nx, ny, nz = n.unbind(-1)
    sign = torch.where(nz >= 0, torch.ones_like(nz), -torch.ones_like(nz))
    a = -1.0 / (sign + nz)
    b = nx * ny * a
    b1 = torch.stack([1.0 + sign * nx * nx * a, sign * b, -sign * nx], dim=-1)
    b2 = torch.stack([b, sign + ny * ny * a, -ny], dim=-1)
    return b1, b2


def ewa_conic_factor(proj: Projection) -> tuple[Tensor, Tensor, Tensor]:
    """Cholesky factor of the conic (Σ₂ + 0.3·I)⁻¹: power = -0.5·((l11·dx + l21·dy)² + (l22·dy)²).

    With Σ₂ = [[a, b], [b, c]] and det = ac - b²: l22 = 1/sqrt(c), l11 = sqrt(c/det), l21 = -b/(det·l11).
    """
    cxx, cxy, cyy = proj.cov2d.unbind(-1)
    ok = proj.visible
    det = torch.where(ok, cxx * cyy - cxy * cxy, torch.ones_like(cxx))
    cyy_s = torch.where(ok, cyy, torch.ones_like(cyy))
    l11 = torch.sqrt(cyy_s / det)
    return l11, -cxy / (det * l11), 1.0 / torch.sqrt(cyy_s)


def log_opacity(opacities: Tensor) -> Tensor:
    """log(opacity'), finite (opacity' = 0 maps to about -69: alpha underflows far below 1/255)."""
    return torch.log(opacities.clamp_min(1e-30))


__all__ = ["Projection", "project", "footprint", "gof_frame", "ewa_conic_factor", "quat_to_rotmat", "log_opacity",
           "TILE", "NEAR_Z", "TSTAR_MIN", "ALPHA_MIN", "ALPHA_MAX", "T_STOP", "EWA_DILATION"]

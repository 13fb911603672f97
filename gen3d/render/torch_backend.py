"""Pure-PyTorch tiled rasterizer: the official GOF forward (and vanilla EWA), differentiable, any device.

Structure (mirrors the CUDA rasterizer, vectorised for torch):

1. ``project`` / ``footprint`` (project.py): per (view, Gaussian) depth, 16x16-tile rectangle, opacity
   factor, and a conservative pixel box outside which alpha < 1/255.
2. Binning: every Gaussian is listed in the ``SUB`` x ``SUB`` pixel sub-tiles (SUB divides 16) that lie
   inside its 16x16-tile rectangle *and* its alpha box. Pixels of a tile rectangle outside the box can
   only skip the Gaussian (alpha < 1/255), so the result equals the CUDA's per-tile lists, while far
   fewer (pixel, Gaussian) pairs are evaluated. Lists are sorted by centre depth, ties by index.
3. Compositing in chunks of ``K`` list entries for all sub-tiles of all views at once: alpha for
   [tiles, SUB², K], transmittance by an exclusive cumprod carried across chunks, the early stop as a
   mask, the median-depth rule on the pixels whose T is still above 0.5. Sub-tiles whose pixels have
   all stopped, or whose list is exhausted, drop out of later chunks. Work and memory grow with the
   (pixel, Gaussian) pairs inside the boxes, never with N x pixels; a chunk holds at most
   ``max_elements`` pairs.

Autograd: each chunk is wrapped in ``torch.utils.checkpoint`` when gradients are needed, so memory
stays at one chunk's intermediates; gradients reach means, quats, scales, opacities and colors
through colour, alpha, depth and normals. The discrete decisions (thresholds, order, binning) are
piecewise constant, as in the CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from gen3d.render.project import (ALPHA_MAX, ALPHA_MIN, T_STOP, TILE, TSTAR_MIN, Projection, ewa_conic_factor,
                                  footprint, gof_frame, log_opacity, project)

_LOG_ZERO = -1e4  # log-opacity of padding entries: exp() underflows to exactly 0
_LOG2E = 1.4426950408889634
_LOG2_ALPHA_MAX = float(torch.log2(torch.tensor(ALPHA_MAX)))  # no clamp needed below this log2-opacity


@dataclass
class TorchRasterConfig:
    """Tuning knobs of the tiled torch backend (results do not depend on them)."""

    sub_tile: int | None = None  # pixel sub-tile edge for binning, divides 16; None: by image size
    chunk: int | None = None  # K: list entries composited per step; None: by sub-tile
    max_elements: int = 1 << 21  # at most this many (pixel, entry) pairs per step (memory bound)

    def resolved(self, width: int, height: int) -> "TorchRasterConfig":
        """Fill the automatic knobs. Measured on a 2-core CPU: small images (the tiny preset's 64²) are
        ~2x faster with 4-pixel sub-tiles (shorter lists, fewer wasted pairs); from 128² on, 8 is as fast
        or faster (fewer, fuller compositing steps)."""
        sub = self.sub_tile or (4 if max(width, height) <= 96 else 8)
        return TorchRasterConfig(sub_tile=sub, chunk=self.chunk or (48 if sub <= 4 else 32),
                                 max_elements=self.max_elements)


@dataclass
class RasterResult:
    color: Tensor  # [V, 3, H, W] clamped to [0, 1]
    alpha: Tensor  # [V, 1, H, W] sum of weights
    depth: Tensor  # [V, 1, H, W] median-depth rule, 0 where nothing was added
    normal: Tensor | None  # [V, 3, H, W] GOF only, sum of w·n (camera frame, not normalised)
    n_contrib: Tensor  # [V, H, W] int32 Gaussians composited per pixel
    radii: Tensor  # [V, N] int32


def rasterize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor, w2c: Tensor,
              width: int, height: int, fx: float, fy: float, tan_fovx: float, tan_fovy: float,
              background: Tensor, mode: str = "gof", normals: bool = True,
              config: TorchRasterConfig | None = None) -> RasterResult:
    """Render N Gaussians into V views. Shapes: means [N, 3], quats [N, 4], scales [N, 3], opacities [N],
    colors [N, 3], w2c [V, 4, 4] (OpenCV world-to-camera), background [3]."""
    cfg = (config or TorchRasterConfig()).resolved(width, height)
    if TILE % cfg.sub_tile:
        raise ValueError(f"sub_tile must divide {TILE}, got {cfg.sub_tile}")
    proj = project(means, quats, scales, opacities, w2c, width, height, fx, fy, tan_fovx, tan_fovy, mode)
    table = _pair_table(proj, colors, fx, fy, normals and mode == "gof")
    lists = _bin(proj, width, height, fx, fy, cfg.sub_tile)
    out = _composite(table, lists, width, height, fx, fy, cfg, mode)
    num_views = w2c.shape[0]
    sub = cfg.sub_tile
    grid_y, grid_x = lists.grid

    def to_image(x: Tensor) -> Tensor:  # [S, SUB², C] -> [V, C, H, W]
        channels = x.shape[-1]
        img = x.reshape(num_views, grid_y, grid_x, sub, sub, channels).permute(0, 5, 1, 3, 2, 4)
        return img.reshape(num_views, channels, grid_y * sub, grid_x * sub)[:, :, :height, :width]

    rgba = to_image(out["rgba"])
    final_t = to_image(out["T"][..., None])
    color = (rgba[:, :3] + final_t * background.view(1, 3, 1, 1)).clamp(0.0, 1.0)
    return RasterResult(color=color, alpha=rgba[:, 3:4], depth=to_image(out["depth"][..., None]),
                        normal=to_image(out["normal"]) if "normal" in out else None,
                        n_contrib=to_image(out["n_contrib"][..., None])[:, 0], radii=proj.radii)


# ------------------------------------------------------------------------------------------ pair table
@dataclass
class PairTable:
    """Per (view, Gaussian) evaluation coefficients packed in one [V·N + 1, C] tensor (last row: padding).

    Every evaluated quantity is ``const + slope_i·di + slope_j·dj`` over the pixels (di, dj) of a
    sub-tile, with ``const`` depending on the sub-tile origin; the table keeps what builds both.
    """

    data: Tensor  # [V·N + 1, C]
    columns: dict[str, slice]


def _pair_table(proj: Projection, colors: Tensor, fx: float, fy: float, with_normals: bool) -> PairTable:
    num_views, n = proj.depths.shape
    # alpha = 2^power (exp2 is cheaper than exp on CPU): log-opacity and the quadratic scaled by log2(e).
    cols: dict[str, Tensor] = {
        "log2_opacity": log_opacity(proj.opacities)[..., None] * _LOG2E,
        "rgb1": torch.cat([colors, torch.ones_like(colors[:, :1])], dim=-1)[None].expand(num_views, n, 4),
        "depth": proj.depths[..., None],
    }
    pads: dict[str, list[float]] = {"log2_opacity": [_LOG_ZERO]}
    if proj.mode == "gof":
        # Channels e1, e2, p (and the rows of Sigma_v⁻¹·d for normals), each linear in the pixel position:
        # p = g_p·d, e_k = g_k·(d - d0), n_c = Sigma_v⁻¹[c]·d with d = ((i + 0.5 - W/2)/fx, (j + 0.5 - H/2)/fy, 1).
        frame = gof_frame(proj)
        g_p, g_1, g_2 = frame["g_p"], frame["g_1"], frame["g_2"]
        cols["neg_half_o2"] = (-0.5 * _LOG2E * frame["o_norm"] ** 2)[..., None]
        cols["o_norm"] = frame["o_norm"][..., None]
        cols["centre"] = torch.stack([frame["x0"], frame["y0"]], dim=-1)
        cols["p_const"] = g_p
        cols["e_const"] = torch.cat([g_1[..., :2], g_2[..., :2]], dim=-1)
        slope_x, slope_y = [g_1[..., 0], g_2[..., 0], g_p[..., 0]], [g_1[..., 1], g_2[..., 1], g_p[..., 1]]
        pads["p_const"] = [0.0, 0.0, 1.0]  # p = 1 on padding entries: no 0/0
        if with_normals:
            s = frame["sigma_inv"]  # [V, N, 3, 3]
            cols["n_const"] = s.reshape(num_views, n, 9)
            slope_x += [s[..., 0, 0], s[..., 1, 0], s[..., 2, 0]]
            slope_y += [s[..., 0, 1], s[..., 1, 1], s[..., 2, 1]]
            pads["n_const"] = [0.0] * 8 + [1.0]  # n = (0, 0, 1) on padding entries: |n| > 0
        cols["slope_i"] = torch.stack(slope_x, dim=-1) / fx
        cols["slope_j"] = torch.stack(slope_y, dim=-1) / fy
    else:
        # Channels e1 = l11·(u - i) + l21·(v - j), e2 = l22·(v - j): power = -0.5·(e1² + e2²).
        l11, l21, l22 = ewa_conic_factor(proj)
        cols["centre"] = proj.means2d
        cols["conic_l"] = torch.stack([l11, l21, l22], dim=-1)
        cols["slope_i"] = torch.stack([-l11, torch.zeros_like(l11)], dim=-1)
        cols["slope_j"] = torch.stack([-l21, -l22], dim=-1)
    columns, parts, pad_row, offset = {}, [], [], 0
    for name, value in cols.items():
        width = value.shape[-1]
        columns[name] = slice(offset, offset + width)
        parts.append(value.reshape(num_views * n, width))
        pad_row.extend(pads.get(name, [0.0] * width))
        offset += width
    ref = proj.depths
    pad = torch.tensor(pad_row, dtype=ref.dtype, device=ref.device)[None]
    return PairTable(data=torch.cat([torch.cat(parts, dim=-1), pad], dim=0), columns=columns)


# ---------------------------------------------------------------------------------------------- binning
@dataclass
class TileLists:
    """Per sub-tile depth-ordered lists of table rows."""

    rows: Tensor  # [P] int64 table row (v·N + n) of each (sub-tile, Gaussian) pair, grouped by sub-tile
    starts: Tensor  # [S] int64 first pair of each sub-tile
    counts: Tensor  # [S] int64 list length
    needs_tstar: Tensor  # [V·N + 1] bool
    grid: tuple[int, int]  # sub-tiles per view (rows, columns); S = V·rows·columns


@torch.no_grad()
def _bin(proj: Projection, width: int, height: int, fx: float, fy: float, sub: int) -> TileLists:
    num_views, n = proj.depths.shape
    device = proj.depths.device
    grid_x, grid_y = -(-width // sub), -(-height // sub)
    per_tile = TILE // sub
    box, draws, needs_tstar = footprint(proj, width, height, fx, fy)
    rect = proj.tile_rects * per_tile
    lo_x = torch.maximum(torch.floor(box[..., 0] / sub).long(), rect[..., 0])
    lo_y = torch.maximum(torch.floor(box[..., 1] / sub).long(), rect[..., 1])
    hi_x = torch.minimum(torch.floor(box[..., 2] / sub).long() + 1, torch.clamp(rect[..., 2], max=grid_x))
    hi_y = torch.minimum(torch.floor(box[..., 3] / sub).long() + 1, torch.clamp(rect[..., 3], max=grid_y))
    span_x, span_y = (hi_x - lo_x).clamp_min(0), (hi_y - lo_y).clamp_min(0)
    counts = torch.where(draws, span_x * span_y, torch.zeros_like(span_x))

    # Depth order per view (stable: ties by Gaussian index), then expand each Gaussian to its sub-tiles.
    order = torch.sort(proj.depths.detach(), dim=1, stable=True).indices  # [V, N]
    rows = (order + torch.arange(num_views, device=device)[:, None] * n).reshape(-1)
    counts_sorted = counts.reshape(-1)[rows]
    keep = counts_sorted > 0
    rows, counts_sorted = rows[keep], counts_sorted[keep]
    total = int(counts_sorted.sum())
    view = torch.div(rows, n, rounding_mode="floor")
    base = ((view * grid_y + lo_y.reshape(-1)[rows]) * grid_x + lo_x.reshape(-1)[rows]).int()  # first sub-tile
    span = span_x.reshape(-1)[rows].int()
    first = (torch.cumsum(counts_sorted, 0) - counts_sorted).int()
    owner = torch.repeat_interleave(counts_sorted, output_size=total)  # pair -> Gaussian (depth order)
    local = torch.arange(total, device=device, dtype=torch.int32) - first[owner]
    span_pair = span[owner]
    row_in_rect = torch.div(local, span_pair, rounding_mode="floor")
    tile = base[owner] + row_in_rect * grid_x + (local - row_in_rect * span_pair)
    # A stable sort by sub-tile keeps the depth order inside each list.
    tile_sorted, perm = torch.sort(tile, stable=True)
    num_tiles = num_views * grid_x * grid_y
    tile_counts = torch.bincount(tile_sorted, minlength=num_tiles).long()
    starts = torch.cumsum(tile_counts, 0) - tile_counts
    needs = torch.cat([needs_tstar.reshape(-1), needs_tstar.new_zeros(1)])
    return TileLists(rows=rows[owner[perm]], starts=starts, counts=tile_counts, needs_tstar=needs,
                     grid=(grid_y, grid_x))


# -------------------------------------------------------------------------------------------- compositing
def _composite(table: PairTable, lists: TileLists, width: int, height: int, fx: float, fy: float,
               cfg: TorchRasterConfig, mode: str) -> dict[str, Tensor]:
    """Front-to-back compositing of every sub-tile list; returns per sub-tile [S, SUB², ...] buffers."""
    sub, k = cfg.sub_tile, cfg.chunk
    grid_y, grid_x = lists.grid
    num_tiles = lists.counts.shape[0]
    ref = table.data
    device, dtype = ref.device, ref.dtype
    q = sub * sub
    # Pixel offsets from each sub-tile's centre pixel position, and the centres themselves.
    offsets = torch.arange(sub, device=device, dtype=dtype) - 0.5 * (sub - 1)
    dj, di = torch.meshgrid(offsets, offsets, indexing="ij")
    features = torch.stack([torch.ones_like(di), di, dj], dim=-1).reshape(q, 3)  # [Q, 3]: (1, di, dj)
    tile_ids = torch.arange(num_tiles, device=device)
    centre_x = ((tile_ids % grid_x) * sub).to(dtype) + 0.5 * (sub - 1)
    centre_y = ((torch.div(tile_ids, grid_x, rounding_mode="floor") % grid_y) * sub).to(dtype) + 0.5 * (sub - 1)
    inside = ((centre_x[:, None] + di.reshape(1, q) < width) & (centre_y[:, None] + dj.reshape(1, q) < height))

    with_normals = "n_const" in table.columns
    state = {
        "T": torch.ones(num_tiles, q, device=device, dtype=dtype),
        "rgba": torch.zeros(num_tiles, 4, q, device=device, dtype=dtype),
        "depth": torch.zeros(num_tiles, q, device=device, dtype=dtype),
        "n_contrib": torch.zeros(num_tiles, q, device=device, dtype=dtype),
    }
    if with_normals:
        state["normal"] = torch.zeros(num_tiles, q, 3, device=device, dtype=dtype)
    alive = inside.clone()  # pixel not stopped yet (pixels outside the image never start)
    needs_grad = torch.is_grad_enabled() and table.data.requires_grad
    step_fn = _ChunkStep(table, features, (fx, fy, 0.5 * width, 0.5 * height), mode, with_normals)
    max_tiles = max(1, cfg.max_elements // (q * k))
    ends = lists.starts + lists.counts
    pad_row = ref.shape[0] - 1
    last_pair = max(lists.rows.numel() - 1, 0)
    step = 0
    while True:
        active = torch.nonzero((lists.counts > step * k) & alive.any(dim=1)).flatten()
        if active.numel() == 0:
            break
        for group in active.split(max_tiles):
            pos = lists.starts[group, None] + step * k + torch.arange(k, device=device)
            rows = torch.where(pos < ends[group, None], lists.rows[pos.clamp(max=last_pair)],
                               torch.full_like(pos, pad_row))
            check_t = mode == "gof" and bool(lists.needs_tstar[rows].any())
            args = (table.data, rows, centre_x[group], centre_y[group], state["T"][group], alive[group])
            if needs_grad:
                res = checkpoint(step_fn, *args, check_t, use_reentrant=False)
            else:
                res = step_fn(*args, check_t)
            t_new, rgba, depth_new, has_depth, n_new, stopped = res[:6]
            state["T"].index_copy_(0, group, t_new)
            state["rgba"].index_add_(0, group, rgba)
            state["depth"].index_copy_(0, group, torch.where(has_depth, depth_new, state["depth"][group]))
            state["n_contrib"].index_add_(0, group, n_new)
            if with_normals:
                state["normal"].index_add_(0, group, res[6])
            alive[group] = alive[group] & ~stopped
        step += 1
    state["rgba"] = state["rgba"].transpose(1, 2)
    state["n_contrib"] = state["n_contrib"].to(torch.int32)
    return state


def _below(value: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` number below ``value``: F.threshold(x, _below(v), 0) keeps exactly x >= v."""
    return float(torch.nextafter(torch.tensor(value, dtype=dtype), torch.tensor(float("-inf"), dtype=dtype)))


class _ChunkStep:
    """One compositing step for a group of A sub-tiles: K list entries each, [A, Q, K] (pixel, entry) pairs."""

    def __init__(self, table: PairTable, features: Tensor, intrinsics: tuple, mode: str, with_normals: bool):
        self.columns, self.features, self.intrinsics = table.columns, features, intrinsics
        self.mode, self.with_normals = mode, with_normals

    def __call__(self, data: Tensor, rows: Tensor, centre_x: Tensor, centre_y: Tensor, t_prev: Tensor,
                 alive: Tensor, check_t: bool):
        a_dim, k_dim = rows.shape
        # [A, C, K]: each coefficient a contiguous [A, K] row.
        gathered = data.index_select(0, rows.reshape(-1)).view(a_dim, k_dim, -1).transpose(1, 2).contiguous()
        # split (not slicing) so that backward concatenates the column grads instead of zero-filling per column
        widths = [sl.stop - sl.start for sl in self.columns.values()]
        tab = dict(zip(self.columns, gathered.split(widths, dim=1)))
        consts = self._constants(tab, centre_x[:, None], centre_y[:, None])  # [A, C, K] at the sub-tile centre
        coef = torch.stack([consts, tab["slope_i"], tab["slope_j"]], dim=1).reshape(a_dim, 3, -1)
        channels = torch.matmul(self.features, coef)  # [A, Q, C·K]: const + slope_i·di + slope_j·dj
        channels = channels.view(a_dim, -1, consts.shape[1], k_dim).unbind(2)  # C x [A, Q, K]
        e1, e2 = channels[0], channels[1]
        perp = torch.addcmul(e1 * e1, e2, e2)
        if self.mode == "gof":
            p = channels[2]
            den = torch.addcmul(perp, p, p)  # |d~|²; m = |o~|²·perp/den
            power = torch.addcmul(tab["log2_opacity"], tab["neg_half_o2"], perp / den)
        else:
            p = den = None
            power = torch.add(tab["log2_opacity"], perp, alpha=-0.5 * _LOG2E)
        alpha = torch.exp2(power)
        if bool((tab["log2_opacity"] > _LOG2_ALPHA_MAX).any()):
            alpha = alpha.clamp(max=ALPHA_MAX)
        alpha = F.threshold(alpha, _below(ALPHA_MIN, alpha.dtype), 0.0)  # skip alpha < 1/255
        if check_t:
            alpha = alpha * (-tab["o_norm"] * p / den > TSTAR_MIN)

        # Transmittance relative to the step's start (T before entry k = t0·cp[k], as the CUDA's running
        # product); weight = t0·cp·alpha = t0·w_rel.
        t0 = t_prev * alive  # stopped pixels contribute nothing
        one_minus = 1.0 - alpha
        cp, cp_end = torch.cumprod(F.pad(one_minus, (1, 0), value=1.0), dim=-1).split([k_dim, 1], dim=-1)
        w_rel = cp * alpha
        t_new = cp_end[..., 0] * t0
        # Early stop: the first entry with T·(1 - alpha) < 1e-4 and everything after it are not added.
        stopping = alive & (t_new < T_STOP)
        stop_rows = torch.nonzero(stopping.view(-1)).flatten()
        q_dim = stopping.shape[1]
        if stop_rows.numel():
            w_flat = w_rel.view(-1, k_dim)
            tile_idx, pixel_idx = torch.div(stop_rows, q_dim, rounding_mode="floor"), stop_rows % q_dim
            t_rows = (cp[tile_idx, pixel_idx] * one_minus[tile_idx, pixel_idx]
                      * t0[tile_idx, pixel_idx, None])  # T after each entry
            kept = t_rows >= T_STOP  # a prefix, since T only decreases
            w_flat.index_copy_(0, stop_rows, w_flat[stop_rows] * kept)
            t_stop = torch.where(kept, t_rows, torch.full_like(t_rows, 2.0)).amin(-1)
            t_stop = torch.minimum(t_stop, t0.view(-1)[stop_rows])
            t_new = t_new.view(-1).index_copy(0, stop_rows, t_stop).view(a_dim, -1)
        t_out = torch.where(alive, t_new, t_prev)

        rgba = torch.bmm(tab["rgb1"], w_rel.transpose(1, 2)) * t0[:, None, :]  # [A, 4, Q]
        n_new = torch.ceil(w_rel.detach()).sum(-1) * alive  # w_rel is 0 or >= 1e-4/255
        depth_new, has_depth = self._median_depth(tab, t0, alive, cp, alpha, p, den)
        result = [t_out, rgba, depth_new, has_depth, n_new, stopping]
        if self.with_normals:
            result.append(self._normals(tab, consts, channels, w_rel, t0))
        return tuple(result)

    def _constants(self, tab: dict[str, Tensor], cx: Tensor, cy: Tensor) -> Tensor:
        """Channel values at each sub-tile's centre pixel, [A, C, K]."""
        if self.mode == "ewa":
            conic = tab["conic_l"]
            ru, rv = tab["centre"][:, 0] - cx, tab["centre"][:, 1] - cy  # (u - i, v - j)
            return torch.stack([conic[:, 0] * ru + conic[:, 1] * rv, conic[:, 2] * rv], dim=1)
        fx, fy, half_w, half_h = self.intrinsics
        xs, ys = (cx + 0.5 - half_w) / fx, (cy + 0.5 - half_h) / fy  # the ray of the centre pixel
        rx, ry = xs - tab["centre"][:, 0], ys - tab["centre"][:, 1]
        c_e, c_p = tab["e_const"], tab["p_const"]
        consts = [c_e[:, 0] * rx + c_e[:, 1] * ry, c_e[:, 2] * rx + c_e[:, 3] * ry,
                  c_p[:, 0] * xs + c_p[:, 1] * ys + c_p[:, 2]]
        if self.with_normals:
            c_n = tab["n_const"]
            consts += [c_n[:, 3 * c] * xs + c_n[:, 3 * c + 1] * ys + c_n[:, 3 * c + 2] for c in range(3)]
        return torch.stack(consts, dim=1)

    def _normals(self, tab, consts, channels, w_rel, t0) -> Tensor:
        """-sum_k w·n_raw/|n_raw| with n_raw = Sigma_v⁻¹·d = const + slope_i·di + slope_j·dj, [A, Q, 3]."""
        n0, n1, n2 = channels[3:6]
        w_n = w_rel * torch.rsqrt(torch.addcmul(torch.addcmul(n0 * n0, n1, n1), n2, n2))
        # sum_k w_n·(const + slope_i·di + slope_j·dj) = (w_n @ const) + di·(w_n @ slope_i) + dj·(w_n @ slope_j)
        coef = torch.cat([consts[:, 3:6], tab["slope_i"][:, 3:6], tab["slope_j"][:, 3:6]], dim=1)  # [A, 9, K]
        acc = torch.bmm(w_n, coef.transpose(1, 2))  # [A, Q, 9]
        feats = self.features
        normal = acc[..., 0:3] + feats[:, 1:2] * acc[..., 3:6] + feats[:, 2:3] * acc[..., 6:9]
        return -normal * t0[..., None]

    def _median_depth(self, tab, t0, alive, cp, alpha, p, den) -> tuple[Tensor, Tensor]:
        """Depth of the last entry added while T > 0.5, on the sub-tiles with a pixel above 0.5 at the start."""
        a_dim, q_dim, k_dim = alpha.shape
        tiles = torch.nonzero((alive & (t0 > 0.5)).any(dim=1)).flatten()
        if tiles.numel() == 0:
            return torch.zeros_like(t0), torch.zeros_like(alive)
        every = tiles.numel() == a_dim

        def sub(x: Tensor) -> Tensor:
            return x if every else x.index_select(0, tiles)

        t_before = sub(cp) * sub(t0)[..., None]
        sel = torch.ceil(F.threshold(t_before, 0.5, 0.0) * sub(alpha))  # 1 where T > 0.5 before and added
        rank = torch.arange(1, k_dim + 1, device=alpha.device, dtype=alpha.dtype)
        last = (sel * rank).amax(-1).long() - 1  # [A', Q], -1: none in this step
        pick = last.clamp_min(0)
        if self.mode == "gof":
            p_sel = sub(p).gather(-1, pick[..., None])[..., 0]
            den_sel = sub(den).gather(-1, pick[..., None])[..., 0]
            value = -sub(tab["o_norm"][:, 0]).gather(-1, pick) * p_sel / den_sel
        else:
            value = sub(tab["depth"][:, 0]).gather(-1, pick)
        if every:
            return value, last >= 0
        return (torch.zeros_like(t0).index_copy(0, tiles, value),
                torch.zeros_like(alive).index_copy(0, tiles, last >= 0))


__all__ = ["rasterize", "RasterResult", "TorchRasterConfig"]

"""The 3D-GS reconstructor: a time-conditioned multi-view U-Net that predicts Gaussians (spec 5-7).

Checkpoint-compatible with the official ``diffusion3dgs_noise_gof``: module and parameter names are
the official ones (``unet.*`` for the U-Net, ``conv.*`` for the 1x1 head), so ``model_1.safetensors``
loads unchanged (its ``lpips_loss.*`` keys are ignored by ``gen3d.weights``).

Input: per sample 5 views (4 target views, then the context view) of 12 channels, ``[B, 5, 12, H, W]``
as built by ``build_reconstructor_input``, and one timestep per view (``reconstructor_timesteps``:
t for the target views, 0 for the clean context view). Output: ``Gaussians`` with batch shape [B],
N = 4 · splat_size² per sample, ordered view, row, column; the context view's map is dropped.

Design facts reproduced from the official code (golden README items 10-14):
* the timestep sinusoid is diffusers' (cosine half first, shift 0) and always computed in float32;
* ResnetBlock_cond adds ``time_emb_proj(emb)`` with no SiLU before it; residuals are scaled by √0.5
  after every ResnetBlock and every attention;
* MVAttention joins the 5 views of a sample into one sequence, 16 heads at every width, bias-free qkv;
* the skip list starts with ``conv_in``'s output; each up block consumes the last ``layers + 1``
  entries from the end, so the full-resolution entries are never used and the output is at
  ``splat_size`` (half the input size in the official model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gen3d.gaussians import PACKED_CHANNELS, Gaussians
from gen3d.weights import PretrainedMixin, load_state_dict_checked, read_safetensors

NORM_GROUPS = 32  # every GroupNorm of the official network; all widths must be multiples of it
NORM_EPS = 1e-5
SKIP_SCALE = math.sqrt(0.5)
MAX_PERIOD = 10000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RAY_CHANNELS = 6  # Plücker (o × d, d)
RGB_CHANNELS = 3


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class ReconstructorConfig:
    """Shape of the reconstructor; the defaults are the official Options (spec section 6)."""

    input_size: int = 256
    splat_size: int = 128  # = input_size / 2^(len(down)-1) · 2^(len(up)-1)
    down_channels: tuple[int, ...] = (64, 128, 256, 512, 1024, 1024)
    down_attention: tuple[bool, ...] = (False, False, False, True, True, True)
    mid_attention: bool = True
    up_channels: tuple[int, ...] = (1024, 1024, 512, 256, 128)
    up_attention: tuple[bool, ...] = (True, True, True, False, False)
    layers_per_block: int = 2  # up blocks use layers_per_block + 1
    num_views: int = 5  # per sample: the target views, then the context view (last)
    num_heads: int = 16
    in_channels: int = 12  # x0 RGB, x_t RGB, Plücker rays

    def __post_init__(self) -> None:
        for name in ("down_channels", "down_attention", "up_channels", "up_attention"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n_down, n_up = len(self.down_channels), len(self.up_channels)
        if len(self.down_attention) != n_down or len(self.up_attention) != n_up:
            raise ValueError(
                f"down_attention/up_attention must match down_channels/up_channels in length, got "
                f"{len(self.down_attention)}/{n_down} and {len(self.up_attention)}/{n_up}")
        if not 1 <= n_up <= n_down:
            raise ValueError(f"need 1 <= len(up_channels) <= len(down_channels), got {n_up} and {n_down}")
        for width in self.down_channels + self.up_channels:
            if width <= 0 or width % NORM_GROUPS or width % self.num_heads:
                raise ValueError(f"every width must be a positive multiple of {NORM_GROUPS} (GroupNorm) and of "
                                 f"num_heads={self.num_heads}, got {width} in {self.down_channels} / "
                                 f"{self.up_channels}")
        if self.layers_per_block < 1 or self.num_views < 2 or self.in_channels < 1:
            raise ValueError(f"invalid layers_per_block={self.layers_per_block}, num_views={self.num_views} "
                             f"or in_channels={self.in_channels}")
        down_factor = 2 ** (n_down - 1)
        if self.input_size % down_factor:
            raise ValueError(f"input_size {self.input_size} is not divisible by 2^(len(down_channels)-1) = "
                             f"{down_factor}")
        expected = self.input_size // down_factor * 2 ** (n_up - 1)
        if self.splat_size != expected:
            raise ValueError(f"splat_size must be input_size / 2^(len(down)-1) · 2^(len(up)-1) = {expected} "
                             f"for input_size {self.input_size}, got {self.splat_size}")

    @property
    def time_proj_dim(self) -> int:
        return self.down_channels[0]

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.down_channels[0]

    @property
    def num_target_views(self) -> int:
        return self.num_views - 1

    @property
    def num_gaussians(self) -> int:
        return self.num_target_views * self.splat_size ** 2

    @classmethod
    def official(cls) -> "ReconstructorConfig":
        """The released model (419,469,280 parameters): 256 px in, 4 × 128² = 65,536 Gaussians."""
        return cls()

    @classmethod
    def golden_tiny(cls) -> "ReconstructorConfig":
        """The small Options of ../shared/reference/golden/reconstructor_tiny (1,070,848 parameters)."""
        return cls(input_size=32, splat_size=16, down_channels=(32, 32, 64), down_attention=(False, True, True),
                   mid_attention=True, up_channels=(64, 32), up_attention=(True, False))

    @classmethod
    def tiny(cls) -> "ReconstructorConfig":
        """CPU training preset: 64 px in, 4 × 32² = 4,096 Gaussians, attention at 16² and 8².

        The official structure with 4 levels instead of 6: a slim 32-channel full-resolution level
        (its skips are unused, as in the official model), attention only where it is cheap, with 4
        heads of 16-32 channels (16 heads of 4-8 channels cost twice the time on a CPU), and one
        ResnetBlock per down level (two per up level): 4.4 M parameters, 0.14 s per forward here.
        """
        return cls(input_size=64, splat_size=32, down_channels=(32, 64, 128, 128),
                   down_attention=(False, False, True, True), mid_attention=True,
                   up_channels=(128, 128, 64), up_attention=(True, True, False), num_heads=4,
                   layers_per_block=1)


# ------------------------------------------------------------------------------------------- input side
def _normalize_rgb(images: Tensor) -> Tensor:
    """[..., 3, H, W] in [-1, 1] -> clamp(x/2 + 0.5, 0, 1) normalised with ImageNet statistics."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device)[:, None, None]
    return ((images / 2 + 0.5).clamp(0, 1) - mean) / std


def build_reconstructor_input(
    x0_images: Tensor,  # [B, V-1, 3, H, W] in [-1, 1]: decoded one-step estimates x0_tilde of the target views
    xt_images: Tensor,  # [B, V-1, 3, H, W] in [-1, 1]: decoded noisy latents x_t of the target views
    context_image: Tensor,  # [B, 3, H, W] in [-1, 1]: the clean input image
    target_rays: Tensor,  # [V-1, 6, H, W] or [B, V-1, 6, H, W]: Plücker rays (o × d, d) of the target views
    context_rays: Tensor | None = None,  # [6, H, W] or [B, 6, H, W]; None = zeros (the official input)
) -> Tensor:
    """The official reconstructor input [B, V, 12, H, W] (spec section 5, golden item 21).

    Target view v: [norm(x0_images[v]), norm(xt_images[v]), target_rays[v]]; last (context) view:
    [norm(context_image), norm(context_image), context_rays], with
    norm(x) = (clamp(x/2 + 0.5, 0, 1) - ImageNet mean) / ImageNet std on each RGB triple.
    """
    if x0_images.ndim != 5 or x0_images.shape[2] != RGB_CHANNELS:
        raise ValueError(f"x0_images must be [B, V-1, 3, H, W], got {tuple(x0_images.shape)}")
    B, Vt, _, H, W = x0_images.shape
    if xt_images.shape != x0_images.shape:
        raise ValueError(f"xt_images must have the shape of x0_images {tuple(x0_images.shape)}, "
                         f"got {tuple(xt_images.shape)}")
    if tuple(context_image.shape) != (B, RGB_CHANNELS, H, W):
        raise ValueError(f"context_image must be [{B}, 3, {H}, {W}], got {tuple(context_image.shape)}")
    dtype, device = x0_images.dtype, x0_images.device
    if target_rays.ndim == 4:
        target_rays = target_rays.unsqueeze(0)
    if tuple(target_rays.shape[1:]) != (Vt, RAY_CHANNELS, H, W) or target_rays.shape[0] not in (1, B):
        raise ValueError(f"target_rays must be [{Vt}, 6, {H}, {W}] or [{B}, {Vt}, 6, {H}, {W}], "
                         f"got {tuple(target_rays.shape)}")
    target_rays = target_rays.to(device=device, dtype=dtype).expand(B, -1, -1, -1, -1)
    if context_rays is None:
        context_rays = torch.zeros(B, RAY_CHANNELS, H, W, dtype=dtype, device=device)
    if context_rays.ndim == 3:
        context_rays = context_rays.unsqueeze(0)
    if tuple(context_rays.shape[1:]) != (RAY_CHANNELS, H, W) or context_rays.shape[0] not in (1, B):
        raise ValueError(f"context_rays must be [6, {H}, {W}] or [{B}, 6, {H}, {W}], got {tuple(context_rays.shape)}")
    context_rays = context_rays.to(device=device, dtype=dtype).expand(B, -1, -1, -1)

    targets = torch.cat([_normalize_rgb(x0_images), _normalize_rgb(xt_images), target_rays], dim=2)
    context = _normalize_rgb(context_image)
    context = torch.cat([context, context, context_rays], dim=1)
    return torch.cat([targets, context[:, None]], dim=1)


def reconstructor_timesteps(t, batch_size: int, num_views: int = 5, device=None) -> Tensor:
    """Per-view timesteps [B·V] float32, view-major per sample: (t, …, t, 0) — the context view is clean.

    ``t`` is a number, a 0-d tensor or a [B] tensor (one timestep per sample).
    """
    t = torch.as_tensor(t, dtype=torch.float32, device=device)
    if t.ndim == 0:
        t = t.expand(batch_size)
    if tuple(t.shape) != (batch_size,):
        raise ValueError(f"t must be a scalar or have shape [{batch_size}], got {tuple(t.shape)}")
    steps = t[:, None].repeat(1, num_views)
    steps[:, -1] = 0
    return steps.reshape(-1)


# --------------------------------------------------------------------------------------------- blocks
def timestep_sinusoid(timesteps: Tensor, dim: int) -> Tensor:
    """diffusers' sinusoid (flip_sin_to_cos, shift 0): [N] -> [N, dim] float32, cosine half first.

    Always float32, as the official code (diffusers calls ``timesteps.float()``), also for a float64 model.
    """
    half = dim // 2
    exponent = -math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / half)
    args = timesteps[:, None].float() * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    """Linear -> SiLU -> Linear on the sinusoid (names as diffusers: linear_1, linear_2)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class ResnetBlock(nn.Module):
    """ResnetBlock_cond: GN-SiLU-conv, + time_emb_proj(emb) (no SiLU), GN-SiLU-conv, (h + skip)·√0.5."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(NORM_GROUPS, in_channels, eps=NORM_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(emb_dim, out_channels)
        self.norm2 = nn.GroupNorm(NORM_GROUPS, out_channels, eps=NORM_EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # x [BV, C, H, W], emb [BV, E]
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (h + self.shortcut(x)) * SKIP_SCALE


class SelfAttention(nn.Module):
    """Multi-head self-attention with a bias-free qkv laid out [3][heads][C/heads] (SDPA kernel)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # [B, N, C]
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # scale (C/heads)^-1/2
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class MVAttention(nn.Module):
    """GroupNorm, then self-attention over the V views of a sample jointly (view, row, column order)."""

    def __init__(self, dim: int, num_heads: int, num_views: int) -> None:
        super().__init__()
        self.num_views = num_views
        self.norm = nn.GroupNorm(NORM_GROUPS, dim, eps=NORM_EPS)
        self.attn = SelfAttention(dim, num_heads)

    def forward(self, x: Tensor) -> Tensor:  # [B·V, C, H, W]
        BV, C, H, W = x.shape
        B = BV // self.num_views
        h = self.norm(x).reshape(B, self.num_views, C, H, W).permute(0, 1, 3, 4, 2).reshape(B, -1, C)
        h = self.attn(h)
        h = h.reshape(B, self.num_views, H, W, C).permute(0, 1, 4, 2, 3).reshape(BV, C, H, W)
        return (h + x) * SKIP_SCALE


def _call(module: nn.Module, use_checkpoint: bool, *args: Tensor) -> Tensor:
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)


class DownBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, layers: int, attention: bool, downsample: bool,
                 cfg: ReconstructorConfig) -> None:
        super().__init__()
        emb = cfg.time_embed_dim
        self.nets = nn.ModuleList([ResnetBlock(in_ch if i == 0 else out_ch, out_ch, emb) for i in range(layers)])
        self.attns = nn.ModuleList([MVAttention(out_ch, cfg.num_heads, cfg.num_views) for _ in range(layers)]
                                   if attention else [])
        self.downsample = nn.Conv2d(out_ch, out_ch, 3, stride=2, padding=1) if downsample else None

    def forward(self, x: Tensor, emb: Tensor, use_checkpoint: bool) -> tuple[Tensor, list[Tensor]]:
        skips = []
        for i, net in enumerate(self.nets):
            x = _call(net, use_checkpoint, x, emb)
            if self.attns:
                x = _call(self.attns[i], use_checkpoint, x)
            skips.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    def __init__(self, channels: int, attention: bool, cfg: ReconstructorConfig) -> None:
        super().__init__()
        self.nets = nn.ModuleList([ResnetBlock(channels, channels, cfg.time_embed_dim) for _ in range(2)])
        self.attns = nn.ModuleList([MVAttention(channels, cfg.num_heads, cfg.num_views)] if attention else [])

    def forward(self, x: Tensor, emb: Tensor, use_checkpoint: bool) -> Tensor:
        x = _call(self.nets[0], use_checkpoint, x, emb)
        if self.attns:
            x = _call(self.attns[0], use_checkpoint, x)
        return _call(self.nets[1], use_checkpoint, x, emb)


class UpBlock(nn.Module):
    def __init__(self, in_ch: int, last_skip_ch: int, out_ch: int, layers: int, attention: bool, upsample: bool,
                 cfg: ReconstructorConfig) -> None:
        super().__init__()
        emb = cfg.time_embed_dim
        self.nets = nn.ModuleList([
            ResnetBlock((in_ch if i == 0 else out_ch) + (last_skip_ch if i == layers - 1 else out_ch), out_ch, emb)
            for i in range(layers)
        ])
        self.attns = nn.ModuleList([MVAttention(out_ch, cfg.num_heads, cfg.num_views) for _ in range(layers)]
                                   if attention else [])
        self.upsample = nn.Conv2d(out_ch, out_ch, 3, padding=1) if upsample else None

    def forward(self, x: Tensor, skips: list[Tensor], emb: Tensor, use_checkpoint: bool) -> Tensor:
        for i, net in enumerate(self.nets):
            x = _call(net, use_checkpoint, torch.cat([x, skips[-1 - i]], dim=1), emb)  # [current, skip]
            if self.attns:
                x = _call(self.attns[i], use_checkpoint, x)
        if self.upsample is not None:
            x = self.upsample(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class ReconstructorUNet(nn.Module):
    """The official ``UNet_timeimage_cond``: [B·V, 12, H, W] + timesteps [B·V] -> [B·V, 14, S, S]."""

    def __init__(self, cfg: ReconstructorConfig) -> None:
        super().__init__()
        down, up = cfg.down_channels, cfg.up_channels
        self.time_proj_dim = cfg.time_proj_dim
        self.gradient_checkpointing = False
        self.conv_in = nn.Conv2d(cfg.in_channels, down[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(cfg.time_proj_dim, cfg.time_embed_dim)
        self.down_blocks = nn.ModuleList([
            DownBlock(down[max(0, i - 1)], c, cfg.layers_per_block, cfg.down_attention[i], i < len(down) - 1, cfg)
            for i, c in enumerate(down)
        ])
        self.mid_block = MidBlock(down[-1], cfg.mid_attention, cfg)
        self.up_blocks = nn.ModuleList([
            UpBlock(down[-1] if i == 0 else up[i - 1], down[max(-2 - i, -len(down))], c, cfg.layers_per_block + 1,
                    cfg.up_attention[i], i < len(up) - 1, cfg)
            for i, c in enumerate(up)
        ])
        self.norm_out = nn.GroupNorm(NORM_GROUPS, up[-1], eps=NORM_EPS)
        self.conv_out = nn.Conv2d(up[-1], PACKED_CHANNELS, 3, padding=1)

    def embed_timesteps(self, timesteps: Tensor) -> Tensor:
        """[B·V] -> [B·V, time_embed_dim] (sinusoid in float32, MLP in the model's dtype)."""
        sinusoid = timestep_sinusoid(timesteps, self.time_proj_dim)
        return self.time_embedding(sinusoid.to(self.time_embedding.linear_1.weight.dtype))

    def forward(self, x: Tensor, timesteps: Tensor) -> Tensor:
        ckpt = self.gradient_checkpointing and self.training
        emb = self.embed_timesteps(timesteps)
        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, emb, ckpt)
            skips.extend(block_skips)
        x = self.mid_block(x, emb, ckpt)
        for block in self.up_blocks:
            n = len(block.nets)
            x = block(x, skips[-n:], emb, ckpt)
            del skips[-n:]
        return self.conv_out(F.silu(self.norm_out(x)))


# ------------------------------------------------------------------------------------------------ model
class Reconstructor(PretrainedMixin, nn.Module):
    """Images [B, V, 12, H, W] + per-view timesteps -> Gaussians [B, (V-1)·S², ·] (official layout)."""

    config_class = ReconstructorConfig

    def __init__(self, config: ReconstructorConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = ReconstructorUNet(config)
        self.conv = nn.Conv2d(PACKED_CHANNELS, PACKED_CHANNELS, 1)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute every ResnetBlock and attention in the backward pass (training memory saver)."""
        self.unet.gradient_checkpointing = enabled

    @classmethod
    def from_official(cls, path, config: ReconstructorConfig | None = None, device="cpu",
                      dtype: torch.dtype = torch.float32) -> "Reconstructor":
        """Load the released ``model_1.safetensors`` (strict, ``lpips_loss.*`` ignored) into ``.official()``."""
        with torch.device("meta"):
            model = cls(config or ReconstructorConfig.official())
        model.load_report = load_state_dict_checked(model, read_safetensors(path), strict=True, source=str(path))
        return model.to(device=device, dtype=dtype).eval()

    def _check_inputs(self, images: Tensor, timesteps: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.config
        expected = (cfg.num_views, cfg.in_channels, cfg.input_size, cfg.input_size)
        if images.ndim != 5 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be [B, {', '.join(map(str, expected))}], got {tuple(images.shape)}")
        B, V = images.shape[:2]
        if tuple(timesteps.shape) not in ((B * V,), (B, V)):
            raise ValueError(f"timesteps must be [{B * V}] or [{B}, {V}], got {tuple(timesteps.shape)}")
        return images.reshape(B * V, *expected[1:]), timesteps.reshape(B * V).to(images.device)

    def forward_raw(self, images: Tensor, timesteps: Tensor) -> Tensor:
        """Pre-activation Gaussians [B, (V-1)·S², 14]: context view dropped, order view, row, column."""
        x, t = self._check_inputs(images, timesteps)
        B, V, S = images.shape[0], self.config.num_views, self.config.splat_size
        maps = self.conv(self.unet(x, t)).reshape(B, V, PACKED_CHANNELS, S, S)
        return maps[:, : V - 1].permute(0, 1, 3, 4, 2).reshape(B, -1, PACKED_CHANNELS)

    def forward(
        self,
        images: Tensor,  # [B, V, 12, H, W] from build_reconstructor_input; the context view is last
        timesteps: Tensor,  # [B·V] or [B, V] from reconstructor_timesteps: (t, t, t, t, 0) per sample
    ) -> Gaussians:
        return Gaussians.from_raw(self.forward_raw(images, timesteps))


__all__ = ["ReconstructorConfig", "Reconstructor", "ReconstructorUNet", "build_reconstructor_input",
           "reconstructor_timesteps", "timestep_sinusoid", "IMAGENET_MEAN", "IMAGENET_STD"]

"""The ImageDream multi-view 2D UNet ("ipmv" variant) that Gen-3Diffusion fine-tunes (spec section 2).

Module and parameter names are the official LDM-style keys (``input_blocks.N.M``, ``middle_block.K``,
``output_blocks.N.M``, ``out.0/2``, ``time_embed.0/2``, ``camera_embed.0/2``, ``image_embed.*``), so
the released weights load by exact name and shape, without renaming (773 tensors).

Frames are flattened into the batch: a batch of B objects with F frames is [B·F, ...], rows
b·F ... b·F + F − 1 belong to object b, and the last frame of each object is the context slot that the
model overwrites with the clean image latent ``ip_img``. Self-attention joins the F frames of an
object; cross-attention sees 77 text tokens plus ``ip_dim`` image-prompt tokens from the Perceiver
resampler, with separate keys/values and two softmaxes.

Float32 islands of the official code are mirrored, so a float64 model reproduces the official float64
run: the sinusoid frequencies are float32 values, and the resampler softmax runs in float32 (its
rounding follows the CPU's vector kernels, which leaves ~1e-7 between machines). Attention uses
torch's scaled_dot_product_attention (the official code needs xformers; same maths).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gen3d.weights import PretrainedMixin

# Fixed in the official code, whatever the constructor says (golden README, "resampler_hardcoded").
RESAMPLER_DEPTH = 4
RESAMPLER_HEADS = 12
RESAMPLER_DIM_HEAD = 64
RESAMPLER_FF_MULT = 4
GROUPS = 32


@dataclass
class MultiViewUNetConfig:
    """Constructor arguments of the official ``MultiViewUNetModel`` plus ``ip_in_dim`` and ``num_frames``."""

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)  # downsampling factors that get a transformer
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_head_channels: int = 64  # head width; the head count follows each level's width
    context_dim: int = 1024  # text-token width = resampler width and output width
    camera_dim: int = 16  # flattened 4x4 camera-to-world per frame
    ip_dim: int = 16  # number of image-prompt tokens (resampler queries)
    ip_in_dim: int = 1280  # image-feature width fed to the resampler (1280 = CLIP ViT-H, official)
    ip_weight: float = 1.0  # weight of the image-prompt attention in cross-attention
    transformer_depth: int = 1
    num_frames: int = 5  # default frames per object (4 target views + 1 context slot)

    def __post_init__(self) -> None:
        self.attention_resolutions = tuple(self.attention_resolutions)
        self.channel_mult = tuple(self.channel_mult)
        for mult in self.channel_mult:
            width = self.model_channels * mult
            if width % GROUPS or width % self.num_head_channels:
                raise ValueError(
                    f"level width {width} must be divisible by {GROUPS} (GroupNorm) and by "
                    f"num_head_channels {self.num_head_channels}"
                )
        if self.ip_dim <= 0 or self.num_frames < 1:
            raise ValueError(f"ip_dim must be > 0 and num_frames >= 1, got {self.ip_dim}, {self.num_frames}")

    @classmethod
    def official(cls) -> "MultiViewUNetConfig":
        """The released ImageDream / Gen-3Diffusion UNet (941,672,900 parameters)."""
        return cls()

    @classmethod
    def golden_tiny(cls) -> "MultiViewUNetConfig":
        """The configuration of ../shared/reference/golden/mv_unet_tiny (1,633,476 parameters)."""
        return cls(model_channels=32, attention_resolutions=(1, 2), channel_mult=(1, 1, 2), num_head_channels=16,
                   context_dim=16)

    @classmethod
    def tiny(cls) -> "MultiViewUNetConfig":
        """A CPU-trainable preset (7.7 M parameters): the official layout at 64 base channels with one
        ResBlock per level, attention at 1/2 and 1/4 resolution and in the middle block only, 64-wide
        text tokens, and image features of width 192 (the tiny CLIP vision tower of gen3d.pipeline)."""
        return cls(model_channels=64, num_res_blocks=1, attention_resolutions=(2, 4), channel_mult=(1, 2, 2),
                   num_head_channels=32, context_dim=64, ip_in_dim=192)


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoid [N] -> [N, dim], cosine half first; frequencies are float32 values (official).

    The products t·freq are taken in the dtype that ``timesteps`` promotes to with float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(timesteps.device)
    args = timesteps[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def _mlp(dim_in: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim), nn.SiLU(), nn.Linear(dim, dim))


def _split_heads(t: Tensor, heads: int) -> Tensor:
    """[N, L, heads·d] -> [N, heads, L, d]."""
    return t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


def _merge_heads(t: Tensor) -> Tensor:
    """[N, heads, L, d] -> [N, L, heads·d]."""
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)


# --- convolutional blocks --------------------------------------------------------------------------


class ResBlock(nn.Module):
    """GN-SiLU-conv, + Linear(SiLU(emb)), GN-SiLU-conv, plus a 1x1 skip when the width changes."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int):
        super().__init__()
        # nn.Identity holds the slot of the official (p = 0) Dropout so the key indices match.
        self.in_layers = nn.Sequential(nn.GroupNorm(GROUPS, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(nn.GroupNorm(GROUPS, out_channels), nn.SiLU(), nn.Identity(),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        if out_channels != channels:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)
        else:
            self.skip_connection = nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


# --- attention -------------------------------------------------------------------------------------


class CrossAttention(nn.Module):
    """Multi-head attention, bias-free q/k/v; with ``ip_dim`` > 0 the last ``ip_dim`` context tokens
    get their own keys/values (``to_k_ip``/``to_v_ip``) and a second softmax, added with ``ip_weight``."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int,
                 ip_dim: int = 0, ip_weight: float = 1.0):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads, self.ip_dim, self.ip_weight = heads, ip_dim, ip_weight
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        if ip_dim > 0:
            self.to_k_ip = nn.Linear(context_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x [N, L, query_dim]; context [N, T (+ ip_dim), context_dim] or None (self-attention)."""
        context = x if context is None else context
        q = _split_heads(self.to_q(x), self.heads)
        if self.ip_dim > 0:
            text, image = context[:, :-self.ip_dim], context[:, -self.ip_dim:]
        else:
            text, image = context, None
        k, v = _split_heads(self.to_k(text), self.heads), _split_heads(self.to_v(text), self.heads)
        out = F.scaled_dot_product_attention(q, k, v)
        if image is not None:
            k_ip = _split_heads(self.to_k_ip(image), self.heads)
            v_ip = _split_heads(self.to_v_ip(image), self.heads)
            out = out + self.ip_weight * F.scaled_dot_product_attention(q, k_ip, v_ip)
        return self.to_out(_merge_heads(out))


class GEGLU(nn.Module):
    """Linear to 2·dim_out; first half is the value, second the gate; exact (erf) GELU."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock3D(nn.Module):
    """Multi-view self-attention over all frames of an object, then cross-attention, then GEGLU FF."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, ip_dim: int, ip_weight: float):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, ip_dim=ip_dim, ip_weight=ip_weight)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor, num_frames: int) -> Tensor:
        """x [B·F, L, dim]; context [B·F, T + ip_dim, context_dim]."""
        n, length, dim = x.shape
        x = x.reshape(n // num_frames, num_frames * length, dim)  # (b f) l c -> b (f l) c
        x = self.attn1(self.norm1(x)) + x
        x = x.reshape(n, length, dim)
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer3D(nn.Module):
    """GroupNorm (eps 1e-6), Linear proj_in on [N, H·W, C] tokens, transformer blocks, proj_out, residual."""

    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int, depth: int,
                 ip_dim: int, ip_weight: float):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(GROUPS, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock3D(inner, heads, dim_head, context_dim, ip_dim, ip_weight) for _ in range(depth))
        self.proj_out = nn.Linear(inner, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, context: Tensor, num_frames: int) -> Tensor:
        n, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        for block in self.transformer_blocks:
            tokens = block(tokens, context, num_frames)
        return self.proj_out(tokens).transpose(1, 2).reshape(n, c, h, w) + x


class CondSequential(nn.Sequential):
    """Runs its layers, giving ResBlocks the embedding and transformers the context."""

    def forward(self, h: Tensor, emb: Tensor, context: Tensor, num_frames: int) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatialTransformer3D):
                h = layer(h, context, num_frames)
            else:
                h = layer(h)
        return h


# --- image-prompt resampler ------------------------------------------------------------------------


class PerceiverAttention(nn.Module):
    """Latent queries attend to [features, latents]; q and k scaled by dim_head^(-1/4); float32 softmax."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.heads, self.dim_head = heads, dim_head
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, latents: Tensor) -> Tensor:
        """x [N, T, dim] features; latents [N, Q, dim] -> update [N, Q, dim]."""
        x, latents = self.norm1(x), self.norm2(latents)
        q = _split_heads(self.to_q(latents), self.heads)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        k, v = _split_heads(k, self.heads), _split_heads(v, self.heads)
        scale = 1 / math.sqrt(math.sqrt(self.dim_head))
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        return self.to_out(_merge_heads(weight @ v))


class Resampler(nn.Module):
    """Perceiver resampler: image features [N, T, in_dim] -> ``num_queries`` tokens [N, Q, dim]."""

    def __init__(self, dim: int, num_queries: int, in_dim: int, depth: int = RESAMPLER_DEPTH,
                 heads: int = RESAMPLER_HEADS, dim_head: int = RESAMPLER_DIM_HEAD, ff_mult: int = RESAMPLER_FF_MULT):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(in_dim, dim)
        self.proj_out = nn.Linear(dim, dim)
        self.norm_out = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PerceiverAttention(dim, dim_head, heads),
                nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * ff_mult, bias=False), nn.GELU(),
                              nn.Linear(dim * ff_mult, dim, bias=False)),
            ])
            for _ in range(depth)
        )

    def forward(self, features: Tensor) -> Tensor:
        latents = self.latents.expand(features.shape[0], -1, -1)
        x = self.proj_in(features)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


# --- the UNet --------------------------------------------------------------------------------------


class MultiViewUNet(PretrainedMixin, nn.Module):
    """ImageDream multi-view UNet predicting eps for [B·F] latent frames (official key layout)."""

    config_class = MultiViewUNetConfig

    def __init__(self, config: MultiViewUNetConfig):
        super().__init__()
        self.config = c = config
        self.gradient_checkpointing = False
        emb_dim = c.model_channels * 4
        self.time_embed = _mlp(c.model_channels, emb_dim)
        self.camera_embed = _mlp(c.camera_dim, emb_dim)
        self.image_embed = Resampler(c.context_dim, c.ip_dim, c.ip_in_dim)

        def transformer(ch: int) -> SpatialTransformer3D:
            return SpatialTransformer3D(ch, ch // c.num_head_channels, c.num_head_channels, c.context_dim,
                                        c.transformer_depth, c.ip_dim, c.ip_weight)

        ch, ds = c.model_channels, 1
        self.input_blocks = nn.ModuleList([CondSequential(nn.Conv2d(c.in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers = [ResBlock(ch, emb_dim, c.model_channels * mult)]
                ch = c.model_channels * mult
                if ds in c.attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(CondSequential(*layers))
                skip_chans.append(ch)
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(CondSequential(Downsample(ch)))
                skip_chans.append(ch)
                ds *= 2
        self.middle_block = CondSequential(ResBlock(ch, emb_dim, ch), transformer(ch), ResBlock(ch, emb_dim, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_chans.pop(), emb_dim, c.model_channels * mult)]
                ch = c.model_channels * mult
                if ds in c.attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == c.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(CondSequential(*layers))
        self.out = nn.Sequential(nn.GroupNorm(GROUPS, ch), nn.SiLU(), nn.Conv2d(ch, c.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each UNet block in the backward pass (training memory for compute)."""
        self.gradient_checkpointing = enabled

    def encode_image_prompt(self, ip: Tensor) -> Tensor:
        """Image features [N, T, ip_in_dim] (CLIP penultimate states) -> tokens [N, ip_dim, context_dim].

        Depends on the features only, so a sampler can compute it once and pass ``ip_tokens``.
        """
        if ip.ndim != 3 or ip.shape[-1] != self.config.ip_in_dim:
            raise ValueError(f"ip must be [N, tokens, {self.config.ip_in_dim}], got {tuple(ip.shape)}")
        return self.image_embed(ip)

    def embed(self, timesteps: Tensor, camera: Tensor, dtype: torch.dtype) -> Tensor:
        """timesteps [N] (any real dtype), camera [N, camera_dim] -> emb [N, 4·model_channels]."""
        t_emb = timestep_embedding(timesteps, self.config.model_channels).to(dtype)
        return self.time_embed(t_emb) + self.camera_embed(camera)

    def forward(
        self,
        x: Tensor,  # [B·F, in_channels, H, W] noisy latents x_t; the context-slot frames are ignored
        timesteps: Tensor,  # [B·F] diffusion timesteps t (float or int, 0..999)
        context: Tensor,  # [B·F, 77, context_dim] text-encoder last hidden states
        camera: Tensor,  # [B·F, camera_dim] flattened c2w per frame (zeros for the context slot)
        ip: Tensor | None,  # [B·F, T, ip_in_dim] CLIP penultimate image features (zeros = unconditional)
        ip_img: Tensor,  # [B, in_channels, H, W] clean latent of the input image, one per object
        num_frames: int | None = None,  # F; default config.num_frames
        *,
        ip_tokens: Tensor | None = None,  # [B·F, ip_dim, context_dim] from encode_image_prompt, replaces ip
    ) -> Tensor:
        """Predict eps [B·F, out_channels, H, W]. H and W must be divisible by 2^(levels − 1).

        The last frame of each object (rows F−1, 2F−1, ...) is replaced by ``ip_img`` on a copy; the
        caller's ``x`` is not modified.
        """
        c = self.config
        frames = c.num_frames if num_frames is None else num_frames
        self._check_inputs(x, timesteps, context, camera, ip, ip_img, frames, ip_tokens)
        n, _, height, width = x.shape
        objects = x.reshape(n // frames, frames, -1, height, width)
        x = torch.cat([objects[:, :-1], ip_img[:, None].to(x.dtype)], dim=1).reshape(n, -1, height, width)
        emb = self.embed(timesteps, camera, x.dtype)
        if ip_tokens is None:
            ip_tokens = self.image_embed(ip)
        context = torch.cat([context, ip_tokens], dim=1)

        skips = []
        h = x
        for block in self.input_blocks:
            h = self._run(block, h, emb, context, frames)
            skips.append(h)
        h = self._run(self.middle_block, h, emb, context, frames)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, context, frames)
        return self.out(h)

    def _run(self, block: CondSequential, h: Tensor, emb: Tensor, context: Tensor, frames: int) -> Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, h, emb, context, frames, use_reentrant=False)
        return block(h, emb, context, frames)

    def _check_inputs(self, x: Tensor, timesteps: Tensor, context: Tensor, camera: Tensor, ip: Tensor | None,
                      ip_img: Tensor, frames: int, ip_tokens: Tensor | None) -> None:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels or frames < 1 or x.shape[0] % frames:
            raise ValueError(f"x must be [B*{frames}, {c.in_channels}, H, W], got {tuple(x.shape)}")
        n, _, h, w = x.shape
        factor = 2 ** (len(c.channel_mult) - 1)
        if h % factor or w % factor:
            raise ValueError(f"x height and width must be divisible by {factor}, got {tuple(x.shape)}")
        if timesteps.shape != (n,):
            raise ValueError(f"timesteps must be [{n}], got {tuple(timesteps.shape)}")
        if context.ndim != 3 or context.shape[0] != n or context.shape[2] != c.context_dim:
            raise ValueError(f"context must be [{n}, tokens, {c.context_dim}], got {tuple(context.shape)}")
        if camera.shape != (n, c.camera_dim):
            raise ValueError(f"camera must be [{n}, {c.camera_dim}], got {tuple(camera.shape)}")
        if ip_img.shape != (n // frames, c.in_channels, h, w):
            raise ValueError(f"ip_img must be [{n // frames}, {c.in_channels}, {h}, {w}], got {tuple(ip_img.shape)}")
        if (ip is None) == (ip_tokens is None):
            raise ValueError("pass exactly one of ip (image features) and ip_tokens (encode_image_prompt output)")
        if ip is not None and (ip.ndim != 3 or ip.shape[0] != n or ip.shape[2] != c.ip_in_dim):
            raise ValueError(f"ip must be [{n}, tokens, {c.ip_in_dim}], got {tuple(ip.shape)}")
        if ip_tokens is not None and ip_tokens.shape != (n, c.ip_dim, c.context_dim):
            raise ValueError(f"ip_tokens must be [{n}, {c.ip_dim}, {c.context_dim}], got {tuple(ip_tokens.shape)}")

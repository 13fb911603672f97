"""The synchronized 2D/3D sampler (the paper's Algorithm 2, spec section 4) as a stream of steps.

At every DDIM timestep t:
  1. the multi-view UNet predicts eps for the 5 frames (4 target views + the context slot), with
     classifier-free guidance;
  2. the one-step estimate x0_tilde = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) of the targets
     is decoded, together with the noisy x_t, and the reconstructor lifts both to 3D Gaussians;
  3. the Gaussians are rendered at the 4 target cameras and re-encoded: x0_hat;
  4. "3d" guidance: eps_hat = (x_t - sqrt(alpha_bar) x0_hat) / sqrt(1 - alpha_bar) drives the DDIM update,
     so the trajectory is 3D-consistent; "2d": the UNet's own eps drives it (plain multi-view diffusion)
     while the reconstructor still runs so its renders can be shown and measured.
After the last step one more pass at t = 1 on the final latents gives the final Gaussians.

``sample`` yields one ``StepRecord`` per timestep (strictly decreasing t); the last carries the final
Gaussians. It keeps nothing between steps beyond the current latents, so a consumer may stop early.
The arithmetic lives in ``sync_ddim``, which takes the models as callables (the golden test runs the
official loop's stored values through it).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from gen3d.gaussians import Gaussians

GUIDANCE_MODES = ("3d", "2d")


@dataclass
class SamplerConfig:
    num_inference_steps: int = 50
    guidance_scale: float = 5.0  # classifier-free guidance scale of the 2D model
    prompt: Optional[str] = None  # None: the pipeline's default (spec 3)
    negative_prompt: Optional[str] = None
    eta: float = 0.0  # DDIM eta (0 = deterministic given the initial noise)
    guidance: str = "3d"  # "3d" (synchronized, the paper) or "2d" (x0_tilde drives the update)
    guidance_window: tuple[float, float] = (0.0, 1.0)  # fraction of the steps with 3D guidance on, [start, end)
    sample_vae: bool = True  # VAE encodings sampled from the posterior (official) or its mean
    autocast: Optional[str] = None  # e.g. "bfloat16": the network passes run under torch.autocast in that
    # dtype (the DDIM arithmetic, renders and records stay in the pipeline's dtype); see ``fast_autocast_dtype``

    def __post_init__(self) -> None:
        if self.guidance not in GUIDANCE_MODES:
            raise ValueError(f"guidance must be one of {GUIDANCE_MODES}, got {self.guidance!r}")
        if not 1 <= self.num_inference_steps <= 1000:
            raise ValueError(f"num_inference_steps must be in 1..1000, got {self.num_inference_steps}")
        start, end = self.guidance_window
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"guidance_window must satisfy 0 <= start <= end <= 1, got {self.guidance_window}")
        if self.guidance_scale < 0 or not math.isfinite(self.guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {self.guidance_scale}")
        if self.autocast not in (None, "bfloat16", "float16"):
            raise ValueError(f"autocast must be None, 'bfloat16' or 'float16', got {self.autocast!r}")

    def guided(self, index: int) -> bool:
        """Whether step ``index`` (0-based) uses 3D guidance."""
        if self.guidance == "2d":
            return False
        start, end = self.guidance_window
        position = index / self.num_inference_steps
        return start <= position < end or (end == 1.0 and index == self.num_inference_steps - 1)


def fast_autocast_dtype(device) -> Optional[str]:
    """"bfloat16" where ``device`` runs bfloat16 matrix products natively (CUDA with bf16, or a CPU with
    AMX or AVX512-BF16: 5-7x float32 there), else None (emulated bfloat16 would be slower)."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else None
    if device.type != "cpu":
        return None
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    except OSError:  # not Linux: no cheap way to tell
        return None
    return "bfloat16" if {"amx_bf16", "avx512_bf16"} & set(flags) else None


AUTOCAST_CHOICES = ("auto", "off", "bfloat16", "float16")


def resolve_autocast(choice: str, device: str, dtype: str = "float32"):
    """(autocast dtype name or None, a sentence saying what the network passes run in and why).

    "auto": bfloat16 where the device computes it natively (a CPU with AMX or AVX512-BF16, a bf16 GPU)
    and the pipeline is float32; otherwise the pipeline's own dtype. "off": always its own dtype.
    """
    if choice not in AUTOCAST_CHOICES:
        raise ValueError(f"autocast must be one of {AUTOCAST_CHOICES}, got {choice!r}")
    if choice == "off":
        return None, f"Network passes in {dtype} (autocast off)."
    if choice != "auto":
        return choice, f"Network passes in {choice} autocast (as requested); sampling arithmetic in {dtype}."
    if dtype != "float32":
        return None, f"Network passes in {dtype}."
    fast = fast_autocast_dtype(device)
    if fast is None:
        return None, f"Network passes in float32: this {device} has no native bfloat16 (autocast would be slower)."
    return fast, (f"Network passes in {fast} autocast: this {device} computes it natively (several times float32); "
                  f"sampling arithmetic and renders in float32. `--autocast off` for float32 throughout.")


# ----------------------------------------------------------------------------------------- arithmetic
def cfg_combine(eps_pair: Tensor, guidance_scale: float) -> Tensor:
    """eps_pair [2F, ...] (unconditional rows first) -> u + s (c - u) [F, ...]."""
    uncond, cond = eps_pair.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def predict_x0(x_t: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def eps_from_x0(x_t: Tensor, x0: Tensor, alpha_bar: Tensor) -> Tensor:
    return (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()


@dataclass
class DenoiseStep:
    """What one timestep of ``sync_ddim`` computed (latent space)."""

    index: int
    t: int
    alpha_bar: float
    x_t: Tensor  # [F, C, h, w] latents entering the step
    eps: Tensor  # [F, C, h, w] CFG noise of the 2D model
    x0_tilde: Tensor  # [F-1, C, h, w] 2D one-step estimate of the target frames
    lifted: Any  # what ``lift`` returned (the Gaussians and their images)
    x0_hat: Optional[Tensor]  # [F-1, C, h, w] re-encoded renders (None when not needed)
    guided: bool
    x_prev: Tensor  # [F, C, h, w] latents after the DDIM update
    final_lifted: Any = None  # the extra pass at t = 1 after the last step (last step only)


def sync_ddim(
    x_T: Tensor,  # [F, C, h, w] initial latents (F-1 target frames, then the context slot)
    scheduler,  # a diffusers DDIMScheduler, set_timesteps already called
    predict_eps: Callable[[Tensor, int], Tensor],  # (x_t, t) -> CFG-combined eps [F, ...]
    lift: Callable[[Tensor, Tensor, int], Any],  # (x_t, x0_tilde, t) -> Gaussians and images
    encode_renders: Callable[[Any], Tensor],  # lifted -> x0_hat latents [F-1, ...]
    guided: Callable[[int], bool],
    needs_x0_hat: Callable[[int], bool] = lambda i: True,
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> Iterator[DenoiseStep]:
    """The official loop's arithmetic (spec 4.2-4.3, golden items 18-20), one DenoiseStep per timestep."""
    x_t = x_T
    timesteps = scheduler.timesteps.tolist()
    targets = x_T.shape[0] - 1
    for index, t in enumerate(timesteps):
        alpha_bar = scheduler.alphas_cumprod[t].to(x_t)
        eps = predict_eps(x_t, t)
        x0_tilde = predict_x0(x_t[:targets], eps[:targets], alpha_bar)
        lifted = lift(x_t, x0_tilde, t)
        use_3d = guided(index)
        x0_hat = encode_renders(lifted) if (use_3d or needs_x0_hat(index)) else None
        eps_hat = torch.cat([eps_from_x0(x_t[:targets], x0_hat, alpha_bar), eps[targets:]]) if use_3d else eps
        x_prev = scheduler.step(eps_hat, t, x_t, eta=eta, generator=generator).prev_sample
        step = DenoiseStep(index=index, t=int(t), alpha_bar=float(scheduler.alphas_cumprod[t]), x_t=x_t, eps=eps, x0_tilde=x0_tilde,
                           lifted=lifted, x0_hat=x0_hat, guided=use_3d, x_prev=x_prev)
        if index == len(timesteps) - 1:  # final pass at the last t on the final latents, no update
            final_eps = predict_eps(x_prev, t)
            step.final_lifted = lift(x_prev, predict_x0(x_prev[:targets], final_eps[:targets], alpha_bar), t)
        yield step
        x_t = x_prev


# ------------------------------------------------------------------------------------ the public stream
@dataclass
class Lifted:
    """The 3D side of one pass: Gaussians and the images around them (model space [-1, 1])."""

    gaussians: Gaussians  # batched [1, N]
    x0_images: Tensor  # [V, 3, H, W] decoded x0_tilde
    xt_images: Tensor  # [V, 3, H, W] decoded x_t of the target frames
    renders: Tensor  # [V, 3, H, W] Gaussians rendered at the target views, in [0, 1], resized to H


@dataclass
class StepRecord:
    """One timestep of the synchronized sampler, detached and on the CPU; images in [0, 1]."""

    index: int  # 0-based step number
    num_steps: int
    t: int  # diffusion timestep
    alpha_bar: float
    guided: bool  # whether 3D guidance drove this step's update
    xt_images: Tensor  # [V, 3, H, W] decoded noisy latents x_t of the target views
    x0_tilde_images: Tensor  # [V, 3, H, W] decoded 2D one-step estimates
    x0_hat_images: Tensor  # [V, 3, H, W] renders of this step's Gaussians at the target views
    gaussians: Gaussians  # this step's Gaussians (unbatched)
    psnr: Tensor  # [V] PSNR (dB) between x0_tilde and x0_hat: 2D-vs-3D consistency
    gaussian_stats: dict[str, float]
    seconds: float  # wall time of this step
    final_gaussians: Optional[Gaussians] = None  # last record only: Gaussians of the final pass
    final_images: Optional[Tensor] = None  # last record only: their renders at the target views
    final_x0_tilde_images: Optional[Tensor] = None  # last record only: the final pass's 2D estimates

    @property
    def is_last(self) -> bool:
        return self.final_gaussians is not None


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB of [V, 3, H, W] images in [0, 1]."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def _image01(x: Tensor) -> Tensor:
    return (x.float() * 0.5 + 0.5).clamp(0, 1).cpu()


def _check_image(image: Tensor, size: int) -> Tensor:
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"image must be [1, 3, H, W] (or [3, H, W]) in [0, 1], got {tuple(image.shape)}")
    if not image.is_meta and not torch.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    if image.shape[-2:] != (size, size):
        image = F.interpolate(image.float(), size=(size, size), mode="bilinear", align_corners=False)
    return image.clamp(0, 1)


class SyncModels:
    """The pipeline's networks wired for one image (spec 2.6, 3, 5): conditioning is computed once.

    Its methods are the callables ``sync_ddim`` takes. Works on any device, the meta device included
    (shape checks of the official sizes without weights).
    """

    views = 4

    def __init__(self, pipe, image: Tensor, config: SamplerConfig, generator: torch.Generator):
        from gen3d.cameras import target_cameras, unet_camera_vectors

        self.pipe, self.config, self.generator = pipe, config, generator
        device, dtype, size = pipe.device, pipe.dtype, pipe.config.image_size
        self.device, self.dtype, self.size = device, dtype, size
        self.frames = self.views + 1
        self.image_ms = _check_image(image, size).to(device=device, dtype=dtype) * 2 - 1
        self.use_cfg = config.guidance_scale != 1.0
        with torch.no_grad():
            positive, negative = pipe.encode_prompt(config.prompt, config.negative_prompt)
            features = pipe.encode_image_prompt(self.image_ms)  # [1, T, D] CLIP penultimate states
            tokens = pipe.unet.encode_image_prompt(features).expand(self.frames, -1, -1)
            ip_latent = pipe.encode_latents(self.image_ms, generator, sample=config.sample_vae)  # [1, C, h, w]
            camera = unet_camera_vectors(dtype=dtype, device=device)
            if self.use_cfg:  # unconditional half first: negative prompt, zero image features, zero latent
                null_tokens = pipe.unet.encode_image_prompt(torch.zeros_like(features)).expand(self.frames, -1, -1)
                self.context = torch.cat([negative.expand(self.frames, -1, -1), positive.expand(self.frames, -1, -1)])
                self.ip_tokens = torch.cat([null_tokens, tokens])
                self.ip_img = torch.cat([torch.zeros_like(ip_latent), ip_latent])
                self.camera = torch.cat([camera, camera])
            else:
                self.context, self.ip_tokens, self.ip_img = positive.expand(self.frames, -1, -1), tokens, ip_latent
                self.camera = camera
        self.rays = target_cameras(size).plucker().to(device=device, dtype=dtype)
        self.render_cameras = target_cameras(pipe.config.render_size).to(device=device)
        self.autocast = getattr(torch, config.autocast) if config.autocast else None

    def _networks(self):
        """The context the network passes run in: autocast to ``config.autocast``, or nothing."""
        if self.autocast is None or self.device.type == "meta":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def initial_latents(self) -> Tensor:
        shape = (self.frames, self.pipe.unet.config.in_channels, self.pipe.latent_size, self.pipe.latent_size)
        noise = torch.randn(shape, generator=self.generator, device=self.generator.device, dtype=torch.float32)
        return noise.to(self.device, self.dtype)

    def predict_eps(self, x_t: Tensor, t: int) -> Tensor:
        x_in = torch.cat([x_t, x_t]) if self.use_cfg else x_t
        steps = torch.full((x_in.shape[0],), float(t), device=self.device, dtype=self.dtype)
        with self._networks():
            out = self.pipe.unet(x_in, steps, self.context, self.camera, None, self.ip_img, num_frames=self.frames,
                                 ip_tokens=self.ip_tokens).to(self.dtype)
        return cfg_combine(out, self.config.guidance_scale) if self.use_cfg else out

    def lift(self, x_t: Tensor, x0_tilde: Tensor, t: int) -> Lifted:
        from gen3d.reconstructor import build_reconstructor_input, reconstructor_timesteps
        from gen3d.render import render

        views = self.views
        with self._networks():
            decoded = self.pipe.decode_latents(torch.cat([x0_tilde, x_t[:views]])).to(self.dtype)
            x0_images, xt_images = decoded[:views], decoded[views:]
            inputs = build_reconstructor_input(x0_images[None], xt_images[None], self.image_ms, self.rays)
            gaussians = self.pipe.reconstructor(inputs, reconstructor_timesteps(t, 1, device=self.device))
        gaussians = gaussians.to(dtype=self.dtype)
        color = render(gaussians[0], self.render_cameras, mode=self.pipe.config.render_mode, normals=False).color.to(self.dtype)
        if color.shape[-1] != self.size:
            color = F.interpolate(color, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return Lifted(gaussians=gaussians, x0_images=x0_images, xt_images=xt_images, renders=color)

    def encode_renders(self, lifted: Lifted) -> Tensor:
        with self._networks():
            latents = self.pipe.encode_latents(lifted.renders * 2 - 1, self.generator, sample=self.config.sample_vae)
        return latents.to(self.dtype)


def _record(step: DenoiseStep, num_steps: int) -> StepRecord:
    lifted: Lifted = step.lifted
    gaussians = lifted.gaussians[0].detach().to(device="cpu", dtype=torch.float32)
    x0_tilde_images, renders = _image01(lifted.x0_images), lifted.renders.float().clamp(0, 1).cpu()
    record = StepRecord(
        index=step.index, num_steps=num_steps, t=step.t, alpha_bar=step.alpha_bar, guided=step.guided,
        xt_images=_image01(lifted.xt_images), x0_tilde_images=x0_tilde_images, x0_hat_images=renders,
        gaussians=gaussians, psnr=psnr(x0_tilde_images, renders), gaussian_stats=gaussians.stats(), seconds=0.0)
    if step.final_lifted is not None:
        record.final_gaussians = step.final_lifted.gaussians[0].detach().to(device="cpu", dtype=torch.float32)
        record.final_images = step.final_lifted.renders.float().clamp(0, 1).cpu()
        record.final_x0_tilde_images = _image01(step.final_lifted.x0_images)
    return record


def sample(pipe, image: Tensor, config: SamplerConfig | None = None,
           generator: Optional[torch.Generator] = None) -> Iterator[StepRecord]:
    """Run Algorithm 2 on a preprocessed image [1, 3, H, W] in [0, 1]; yield one record per timestep.

    All randomness (initial noise, VAE posterior samples, DDIM eta noise) comes from ``generator``
    (default: a CPU generator seeded with 0), in a fixed order: the same seed gives the same records.
    """
    from diffusers import DDIMScheduler

    config = config or SamplerConfig()
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    models = SyncModels(pipe, image, config, generator)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # per call: the app runs several at once
    scheduler.set_timesteps(config.num_inference_steps, device=pipe.device)
    x_T = models.initial_latents()
    steps = sync_ddim(x_T, scheduler, models.predict_eps, models.lift, models.encode_renders, config.guided,
                      needs_x0_hat=lambda i: False, eta=config.eta, generator=generator)
    while True:
        # Grad mode is per thread, and a consumer such as gradio may resume this generator from another thread:
        # no_grad is entered around each step rather than around the loop (which would also leak into the consumer).
        clock = time.perf_counter()  # time spent by the consumer is not the sampler's
        with torch.no_grad():
            step = next(steps, None)
            if step is None:
                return
            record = _record(step, config.num_inference_steps)
        record.seconds = time.perf_counter() - clock
        yield record


def generate(pipe, image: Tensor, config: SamplerConfig | None = None,
             generator: Optional[torch.Generator] = None) -> StepRecord:
    """Non-streaming call: run the whole stream and return its last record (with the final Gaussians)."""
    last = None
    for last in sample(pipe, image, config, generator):
        pass
    return last

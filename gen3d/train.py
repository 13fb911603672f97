"""Joint 2D + 3D training (the paper's Algorithm 1, spec section 13), on one CPU or many GPUs.

One training step on a batch of B objects (4 target views each, plus the input view and novel views):
  1. encode the target views with the (frozen) VAE: z0; draw t ~ U{0..999} and noise per object;
     x_t = sqrt(alpha_bar) z0 + sqrt(1 - alpha_bar) noise (the context slot is the clean input latent);
  2. the 2D multi-view UNet predicts the noise: L_2D = ||eps_pred - noise||^2, and its one-step
     estimate x0_tilde = (x_t - sqrt(1 - alpha_bar) eps_pred) / sqrt(alpha_bar);
  3. the reconstructor gets the decoded x0_tilde and x_t of the targets plus the clean input view
     (timesteps t, t, t, t, 0) and predicts Gaussians;
  4. they are rendered at the 4 target views and the novel views: L_3D = MSE(rgb) + MSE(alpha)
     (+ LPIPS when its weights are available locally: they are not bundled, so it is off by default);
  5. L_total = lambda_2d L_2D + L_3D updates both networks together.
The classifier-free guidance condition (image prompt, input latent, prompt) is dropped with
probability ``cfg_dropout``. ``x0_source="gt"`` gives the reconstructor the ground-truth targets
instead of x0_tilde (a warm-up for a reconstructor trained from scratch). ``stage="vae"`` trains
the small model's VAE alone (the released model uses Stable Diffusion's).

Everything goes through ``accelerate`` (devices, DDP, mixed precision, gradient accumulation).
Checkpoints are safetensors (weights, optimizer moments) plus JSON, written atomically and resumed
automatically from ``OUT/checkpoint``; nothing is ever pickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

STAGES = ("vae", "joint")


@dataclass
class TrainConfig:
    data: str  # dataset folder (gen3d-multiview-v1, see gen3d/data/folder.py)
    out: str  # run folder: checkpoint/, log.jsonl, loss_curve.png, samples/
    stage: str = "joint"  # "vae" or "joint"
    init: str = "tiny-random"  # "tiny-random", a gen3d checkpoint folder, or a preset (fine-tuning)
    init_reconstructor: str = ""  # optional gen3d folder whose reconstructor replaces init's (staged runs)
    steps: int = 1000  # total optimizer steps of this stage (resume continues to this number)
    batch_size: int = 4
    n_novel: int = 4  # novel views per object supervised by L_3D
    lr_2d: float = 2e-4  # UNet, image encoder, prompt embeddings
    lr_3d: float = 4e-4  # reconstructor (official default)
    lr_vae: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    grad_accum: int = 1
    mixed_precision: str = "no"  # "no", "bf16", "fp16"
    cfg_dropout: float = 0.1
    x0_source: str = "unet"  # "unet" (Algorithm 1) or "gt" (reconstructor warm-up)
    train_2d: bool = True
    train_3d: bool = True
    lambda_2d: float = 1.0
    lambda_alpha: float = 1.0
    lambda_geometry: float = 0.0  # direct supervision of the target views' Gaussians (``geometry_losses``)
    render_views: int = 4  # target views rendered for L_3D (the first ones; all 4 in Algorithm 1)
    t_power: float = 1.0  # t = floor(T · u^p), u ~ U[0, 1): 1 is Algorithm 1's uniform t; p > 1 favours low noise
    kl_weight: float = 1e-6  # VAE stage
    lambda_chroma: float = 0.0  # VAE stage: extra MSE on colour (each pixel minus its grey level), see vae_losses
    vae_decoder_only: bool = False  # VAE stage: keep the encoder (and so the latent space) fixed, refine the decoder
    checkpoint_every: int = 100
    sample_every: int = 500
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if not self.t_power > 0:
            raise ValueError(f"t_power must be positive, got {self.t_power}")
        if self.x0_source not in ("unet", "gt"):
            raise ValueError(f"x0_source must be 'unet' or 'gt', got {self.x0_source!r}")
        if self.stage == "joint" and not (self.train_2d or self.train_3d):
            raise ValueError("nothing to train: both train_2d and train_3d are off")


# ------------------------------------------------------------------------------------------- losses
def diffusion_inputs(pipe, target_latents: Tensor, generator: torch.Generator, t_power: float = 1.0):
    """t [B], noise and x_t [B, 4, C, h, w] for target latents z0 [B, 4, C, h, w].

    t is uniform (Algorithm 1) for ``t_power`` 1, else floor(T · u^t_power): the sampler's last steps and
    final pass, which decide the output, run at low t, which a short reconstructor stage then sees more of.
    """
    B = target_latents.shape[0]
    device = target_latents.device
    T = pipe.scheduler.config.num_train_timesteps
    if t_power == 1.0:
        t = torch.randint(0, T, (B,), generator=generator).to(device)
    else:
        t = (torch.rand(B, generator=generator) ** t_power * T).long().clamp(0, T - 1).to(device)
    noise = torch.randn(target_latents.shape, generator=generator).to(device, target_latents.dtype)
    alpha_bar = pipe.scheduler.alphas_cumprod.to(device)[t].view(B, 1, 1, 1, 1).to(target_latents.dtype)
    x_t = alpha_bar.sqrt() * target_latents + (1 - alpha_bar).sqrt() * noise
    return t, noise, x_t, alpha_bar


def joint_losses(pipe, batch, config: TrainConfig, generator: torch.Generator) -> dict[str, Tensor]:
    """Algorithm 1 on one batch (MultiViewSample, collated): the loss terms, differentiable."""
    from gen3d.cameras import Cameras, target_cameras, unet_camera_vectors
    from gen3d.conditioning import encode_image_prompt, vae_decode, vae_encode
    from gen3d.reconstructor import build_reconstructor_input, reconstructor_timesteps
    from gen3d.render import render

    device, dtype = pipe.device, pipe.dtype
    inp = batch.input_rgb.to(device, dtype) * 2 - 1  # [B, 3, H, W]
    tgt = batch.target_rgb.to(device, dtype) * 2 - 1  # [B, 4, 3, H, W]
    B, V, _, H, W = tgt.shape
    with torch.no_grad():
        z0 = vae_encode(pipe.vae, tgt.flatten(0, 1), generator)
        z0 = z0.view(B, V, *z0.shape[1:])
        ip_latent = vae_encode(pipe.vae, inp, generator)
    t, noise, x_t, alpha_bar = diffusion_inputs(pipe, z0, generator, config.t_power)
    losses: dict[str, Tensor] = {}

    if not config.train_2d and config.x0_source == "gt":  # reconstructor warm-up: the UNet is not needed
        return _reconstruction_losses(pipe, batch, config, tgt, tgt, x_t, t, inp)

    drop = (torch.rand(B, generator=generator) < config.cfg_dropout).to(device)
    keep = (~drop).to(dtype)
    features = encode_image_prompt(pipe.image_encoder, inp) * keep.view(B, 1, 1)
    positive, negative = pipe.prompt_encoder()
    context = torch.where(drop.view(B, 1, 1), negative.expand(B, -1, -1), positive.expand(B, -1, -1))
    frames = V + 1
    x_in = torch.cat([x_t, torch.zeros_like(x_t[:, :1])], dim=1).flatten(0, 1)  # context slot replaced by the UNet
    eps_pred = pipe.unet(
        x_in, t.repeat_interleave(frames).to(dtype), context.repeat_interleave(frames, dim=0),
        unet_camera_vectors(dtype, device).repeat(B, 1), features.repeat_interleave(frames, dim=0),
        ip_latent * keep.view(B, 1, 1, 1), num_frames=frames,
    ).view(B, frames, *x_t.shape[2:])[:, :V]
    losses["l2d"] = F.mse_loss(eps_pred.float(), noise.float())
    if not config.train_3d:
        return losses

    with torch.no_grad():
        if config.x0_source == "gt":
            x0_images = tgt
        else:
            x0_tilde = (x_t - (1 - alpha_bar).sqrt() * eps_pred.detach()) / alpha_bar.sqrt()
            x0_images = vae_decode(pipe.vae, x0_tilde.flatten(0, 1)).view(B, V, 3, H, W)
    return losses | _reconstruction_losses(pipe, batch, config, tgt, x0_images, x_t, t, inp)


def _reconstruction_losses(pipe, batch, config: TrainConfig, tgt: Tensor, x0_images: Tensor, x_t: Tensor,
                           t: Tensor, inp: Tensor) -> dict[str, Tensor]:
    """Steps 3-4 of Algorithm 1: x0 images (decoded x0_tilde, or the targets) -> Gaussians -> L_3D."""
    from gen3d.cameras import Cameras, target_cameras
    from gen3d.conditioning import vae_decode
    from gen3d.reconstructor import build_reconstructor_input, reconstructor_timesteps
    from gen3d.render import render

    device, dtype = pipe.device, pipe.dtype
    B, V, _, H, W = tgt.shape
    losses: dict[str, Tensor] = {}
    with torch.no_grad():
        xt_images = vae_decode(pipe.vae, x_t.flatten(0, 1)).view(B, V, 3, H, W)
    rays = target_cameras(H).plucker().to(device, dtype)
    recon_in = build_reconstructor_input(x0_images, xt_images, inp, rays)
    gaussians = pipe.reconstructor(recon_in, reconstructor_timesteps(t, B, device=device))
    gaussians = gaussians.to(dtype=torch.float32)  # renders and losses in float32, also under autocast
    n = min(config.n_novel, batch.novel_c2w.shape[1])
    k = min(config.render_views, V)
    rgb_loss, alpha_loss = 0.0, 0.0
    with torch.autocast(device.type, enabled=False):
        if k + n:  # nothing to render in a geometry-only stage
            for b in range(B):
                c2w = torch.cat([batch.target_c2w[b, :k], batch.novel_c2w[b, :n]]).to(device, torch.float32)
                out = render(gaussians[b], Cameras(c2w_gl=c2w, width=W, height=H), mode=pipe.config.render_mode,
                             normals=False)
                gt_rgb = torch.cat([batch.target_rgb[b, :k], batch.novel_rgb[b, :n]]).to(device, out.color.dtype)
                gt_alpha = torch.cat([batch.target_alpha[b, :k], batch.novel_alpha[b, :n]]).to(device, out.alpha.dtype)
                rgb_loss = rgb_loss + F.mse_loss(out.color, gt_rgb) / B
                alpha_loss = alpha_loss + F.mse_loss(out.alpha, gt_alpha) / B
            losses["l3d_rgb"], losses["l3d_alpha"] = rgb_loss, alpha_loss
        if config.lambda_geometry > 0:
            losses["l3d_geometry"] = geometry_losses(gaussians, batch, pipe.reconstructor.config.splat_size)
    return losses


def geometry_losses(gaussians, batch, splat_size: int, min_cover: float = 0.5) -> Tensor:
    """Direct supervision of the pixel-aligned Gaussians from ground-truth depth, colour and alpha.

    The reconstructor's Gaussian (view v, row i, column j) belongs to cell (i, j) of target view v's
    splat grid, which covers a block of (H / splat_size)² input pixels. Its ground truth is that
    block's: the surface point seen through it (the unprojected depth, averaged over its covered
    pixels), their colour, its coverage as opacity, and a scale of 0.35 times the block's width at
    that depth (the best novel-view PSNR when such Gaussians are rendered from ground truth).
    Terms: centre (L1 in world units, x10), colour (L1, x5: MSE, or a weight of 1, left colours grey
    for hundreds of steps) and scale (L1 of the log), where at least ``min_cover`` of the block is
    covered; opacity everywhere (binary KL). Rendering supervises only what the Gaussians look like;
    this tells each one where it is, which a network trained from scratch on a CPU budget learns far
    sooner. Needs depth (``has_depth``); returns the weighted sum.
    """
    from gen3d.cameras import Cameras

    if not all(batch.has_depth):
        raise ValueError("geometry supervision needs depth maps: the dataset has none (set lambda_geometry 0)")
    B, V, _, H, W = batch.target_rgb.shape
    S = splat_size
    device = gaussians.means.device
    depth = batch.target_depth.to(device, torch.float32).flatten(0, 1)  # [B·V, 1, H, W]
    alpha = batch.target_alpha.to(device, torch.float32).flatten(0, 1)
    rgb = batch.target_rgb.to(device, torch.float32).flatten(0, 1)
    cameras = Cameras(c2w_gl=batch.target_c2w.to(device, torch.float32).flatten(0, 1), width=W, height=H)
    points = cameras.unproject(depth[:, 0]).permute(0, 3, 1, 2)  # [B·V, 3, H, W]
    mask = ((alpha > 0.5) & (depth > 0)).float()
    pool = lambda x: F.adaptive_avg_pool2d(x, S)  # noqa: E731
    cover = pool(mask)
    safe = cover.clamp_min(1e-6)
    target_xyz, target_rgb, target_z = pool(points * mask) / safe, pool(rgb * mask) / safe, pool(depth * mask) / safe
    target_scale = 0.35 * (H / S) * target_z / cameras.fy  # of the block's width at that depth
    grid = lambda x: x.reshape(B * V, S, S, -1).permute(0, 3, 1, 2)  # noqa: E731  [B·V, C, S, S]
    on = (cover >= min_cover).float()
    count = on.sum().clamp_min(1.0)
    l_xyz = ((grid(gaussians.means) - target_xyz).abs().sum(1, keepdim=True) * on).sum() / count
    l_rgb = ((grid(gaussians.colors) - target_rgb).abs().mean(1, keepdim=True) * on).sum() / count
    l_scale = ((grid(gaussians.scales).clamp_min(1e-6).log() - target_scale.clamp_min(1e-6).log()).abs()
               .mean(1, keepdim=True) * on).sum() / count
    # binary KL(coverage || opacity): BCE's gradient on the logit (opacity - coverage) does not vanish where
    # the sigmoid saturates, as MSE's does; minus the coverage's own entropy, so that the truth scores 0
    opacity = grid(gaussians.opacities[..., None]).clamp(1e-6, 1 - 1e-6)
    l_opacity = F.binary_cross_entropy(opacity, cover) - F.binary_cross_entropy(cover.clamp(1e-6, 1 - 1e-6), cover)
    return 10 * l_xyz + 5 * l_rgb + 0.1 * l_scale + l_opacity


def vae_losses(pipe, batch, config: TrainConfig, generator: torch.Generator) -> dict[str, Tensor]:
    """Reconstruction (MSE + L1), a small KL term and, weighted ``lambda_chroma``, MSE on the chroma.

    Chroma (each pixel minus the mean of its channels) is a small part of an image's variance, so plain
    MSE lets a small VAE learn grey first and colour late: round 1's VAE, after 780 steps, reproduced
    luminance at 26 dB and no colour at all, and everything downstream came out grey.
    """
    views = torch.cat([batch.target_rgb.flatten(0, 1), batch.novel_rgb.flatten(0, 1)]).to(pipe.device, pipe.dtype)
    x = views * 2 - 1
    dist = pipe.vae.encode(x).latent_dist
    z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator).to(x)
    recon = pipe.vae.decode(z).sample
    losses = {"mse": F.mse_loss(recon, x), "l1": F.l1_loss(recon, x),
              "kl": config.kl_weight * dist.kl().mean() / x[0].numel()}
    if config.lambda_chroma > 0:
        chroma = lambda images: images - images.mean(1, keepdim=True)  # noqa: E731
        losses["chroma"] = config.lambda_chroma * F.mse_loss(chroma(recon), chroma(x))
    return losses


# -------------------------------------------------------------------------------------- checkpoints
def save_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Optimizer state as safetensors (tensors) + JSON (everything else): no pickle."""
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{name}"] = value
    save_file(tensors, str(directory / "optimizer.safetensors"))
    (directory / "optimizer.json").write_text(json.dumps({"param_groups": state["param_groups"], "scalars": scalars}))


def load_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    from gen3d.weights import read_safetensors

    meta = json.loads((directory / "optimizer.json").read_text())
    state: dict[int, dict] = {}
    for key, value in list(read_safetensors(directory / "optimizer.safetensors").items()) + list(meta["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(pipe, optimizer, step: int, config: TrainConfig, generator: torch.Generator) -> Path:
    """OUT/checkpoint, replaced atomically (written to a temporary folder, then renamed)."""
    from safetensors.torch import save_file

    out = Path(config.out)
    tmp, final = out / "checkpoint.tmp", out / "checkpoint"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pipe.save_pretrained(tmp / "pipeline")
    save_optimizer(optimizer, tmp)
    save_file({"generator": generator.get_state()}, str(tmp / "rng.safetensors"))
    (tmp / "trainer.json").write_text(json.dumps({"step": step, "stage": config.stage, "config": asdict(config)}, indent=2))
    old = out / "checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


# -------------------------------------------------------------------------------------------- logs
def plot_losses(log_path: Path, png_path: Path, keys: Optional[list[str]] = None, width: int = 720, height: int = 360) -> Path:
    """A log-scale loss curve (moving average) drawn with PIL from log.jsonl."""
    from PIL import Image, ImageDraw

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    rows = sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])  # a resumed run re-logs steps: last wins
    keys = keys or [k for k in rows[-1] if k.startswith(("loss", "l2d", "l3d", "mse", "l1", "chroma"))] if rows else []
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    pad = 48
    draw.rectangle([pad, 10, width - 10, height - pad], outline="black")
    series = {k: [(r["step"], r[k]) for r in rows if k in r and r[k] > 0] for k in keys}
    points = [p for s in series.values() for p in s]
    if points:
        s_min, s_max = min(p[0] for p in points), max(p[0] for p in points) or 1
        v_min, v_max = math.log10(min(p[1] for p in points)), math.log10(max(p[1] for p in points))
        v_max = v_max if v_max > v_min else v_min + 1
        colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
        for i, (key, values) in enumerate(series.items()):
            xy = [(pad + (width - 10 - pad) * (s - s_min) / max(s_max - s_min, 1),
                   height - pad - (height - pad - 10) * (math.log10(v) - v_min) / (v_max - v_min)) for s, v in values]
            if len(xy) > 1:
                draw.line(xy, fill=colours[i % len(colours)], width=2)
            draw.text((pad + 8, 14 + 14 * i), key, fill=colours[i % len(colours)])
        draw.text((4, 10), f"{10 ** v_max:.3g}", fill="black")
        draw.text((4, height - pad - 12), f"{10 ** v_min:.3g}", fill="black")
        draw.text((pad, height - pad + 6), f"step {s_min}", fill="black")
        draw.text((width - 110, height - pad + 6), f"step {s_max}", fill="black")
    image.save(png_path)
    return png_path


def write_sample(pipe, dataset, out: Path, step: int, steps: int = 20) -> Path:
    """A held-out object through the sampler: input | 4 generated views | 4 ground-truth targets."""
    from gen3d.export import image_grid, save_image
    from gen3d.sampler import SamplerConfig, generate

    sample = dataset[0]
    was_training = {name: m.training for name, m in pipe.modules().items()}
    pipe.eval()
    record = generate(pipe, sample.input_rgb[None], SamplerConfig(num_inference_steps=steps),
                      torch.Generator().manual_seed(0))
    for name, module in pipe.modules().items():
        module.train(was_training[name])
    row = torch.cat([sample.input_rgb[None], record.final_images, sample.target_rgb])
    return save_image(image_grid(row, columns=row.shape[0], pad=2), out / "samples" / f"step_{step:06d}.png")


# -------------------------------------------------------------------------------------------- loop
def trainable_parameters(pipe, config: TrainConfig, image_encoder: bool = True) -> list[dict]:
    if config.stage == "vae":
        vae = pipe.vae
        params = (list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters()) if config.vae_decoder_only
                  else list(vae.parameters()))
        return [{"params": params, "lr": config.lr_vae}]
    groups = []
    if config.train_2d:
        params = list(pipe.unet.parameters()) + (list(pipe.image_encoder.parameters()) if image_encoder else [])
        if isinstance(pipe.prompt_encoder, torch.nn.Module):
            params += list(pipe.prompt_encoder.parameters())
        groups.append({"params": params, "lr": config.lr_2d})
    if config.train_3d:
        groups.append({"params": list(pipe.reconstructor.parameters()), "lr": config.lr_3d})
    return groups


def load_start(config: TrainConfig):
    """The pipeline to train: resumed from OUT/checkpoint if present, else ``config.init``."""
    from gen3d.pipeline import Gen3DPipeline, tiny_pipeline

    checkpoint = Path(config.out) / "checkpoint"
    if (checkpoint / "trainer.json").is_file():
        info = json.loads((checkpoint / "trainer.json").read_text())
        if info["stage"] == config.stage:
            return Gen3DPipeline.from_pretrained(checkpoint / "pipeline"), checkpoint, info["step"]
        return Gen3DPipeline.from_pretrained(checkpoint / "pipeline"), None, 0  # next stage starts from it
    if config.init == "tiny-random":
        pipe = tiny_pipeline(seed=config.seed, name="tiny")
    else:
        pipe = Gen3DPipeline.from_pretrained(config.init)
    if config.init_reconstructor:
        other = Gen3DPipeline.from_pretrained(config.init_reconstructor)
        pipe.reconstructor.load_state_dict(other.reconstructor.state_dict())
        pipe.notes.append(f"reconstructor from {config.init_reconstructor}")
    return pipe, None, 0


def train(config: TrainConfig, max_seconds: Optional[float] = None) -> dict:
    """Train until ``config.steps`` (or ``max_seconds``), checkpointing as it goes; returns the last log row."""
    from accelerate import Accelerator

    from gen3d.data import MultiViewDataset, collate

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2))
    accelerator = Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum)
    pipe, resume_dir, step = load_start(config)
    pipe.to(accelerator.device)
    for module in pipe.modules().values():
        module.requires_grad_(False)
        module.eval()
    if accelerator.num_processes > 1:  # the image encoder is called outside DDP: keep it frozen there
        pipe.image_encoder.requires_grad_(False)
    groups = trainable_parameters(pipe, config, image_encoder=accelerator.num_processes == 1)
    for group in groups:
        for p in group["params"]:
            p.requires_grad_(True)
    trained = {"vae": [pipe.vae]} if config.stage == "vae" else {
        "2d": [pipe.unet, pipe.image_encoder] if config.train_2d else [], "3d": [pipe.reconstructor] if config.train_3d else []}
    for modules in trained.values():
        for m in modules:
            m.train()
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    if resume_dir is not None:
        load_optimizer(optimizer, resume_dir)
    generator = torch.Generator().manual_seed(config.seed + step)
    dataset = MultiViewDataset(config.data, split="train", n_novel=config.n_novel)
    heldout = MultiViewDataset(config.data, split="heldout", n_novel=config.n_novel)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                         collate_fn=collate, num_workers=config.num_workers, generator=generator)
    optimizer, loader = accelerator.prepare(optimizer, loader)
    # the loss sees the modules accelerate wraps (DDP on several GPUs); saving and sampling use ``pipe``
    wrapped = {name: accelerator.prepare(module) for name, module in
               (("unet", pipe.unet), ("reconstructor", pipe.reconstructor))
               if config.stage == "joint" and any(p.requires_grad for p in module.parameters())}
    train_pipe = dataclasses.replace(pipe, **wrapped)
    loss_fn = vae_losses if config.stage == "vae" else joint_losses
    log_path = out / "log.jsonl"
    start, last_row, window = time.perf_counter(), {}, []
    while step < config.steps:
        for batch in loader:
            if step >= config.steps or (max_seconds is not None and time.perf_counter() - start > max_seconds):
                break
            t0 = time.perf_counter()
            with accelerator.accumulate(*[m for ms in trained.values() for m in ms]):
                with accelerator.autocast():
                    losses = loss_fn(train_pipe, batch, config, generator)
                weights = {"l2d": config.lambda_2d, "l3d_alpha": config.lambda_alpha,
                           "l3d_geometry": config.lambda_geometry}
                loss = sum(weights.get(k, 1.0) * v for k, v in losses.items())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss at step {step}: {({k: float(v) for k, v in losses.items()})}")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_([p for g in groups for p in g["params"]], config.grad_clip)
                warm = min(1.0, (step + 1) / max(config.warmup_steps, 1))
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * warm
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            window.append({k: float(v.detach()) for k, v in losses.items()} | {"loss": float(loss.detach()), "seconds": time.perf_counter() - t0})
            if step % config.log_every == 0 or step == config.steps:
                last_row = {"step": step} | {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                with open(log_path, "a") as f:
                    f.write(json.dumps(last_row) + "\n")
                window = []
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last_row.items()), flush=True)
            if step % config.checkpoint_every == 0 or step == config.steps:
                save_checkpoint(pipe, optimizer, step, config, generator)
                plot_losses(log_path, out / "loss_curve.png")
            if config.stage == "joint" and config.sample_every and step % config.sample_every == 0:
                write_sample(pipe, heldout, out, step)
        else:
            continue
        break
    if config.stage == "vae" and not config.vae_decoder_only:  # a fixed encoder keeps its latent scale
        calibrate_vae_scale(pipe, dataset)
    save_checkpoint(pipe, optimizer, step, config, generator)
    if log_path.exists():
        plot_losses(log_path, out / "loss_curve.png")
    return last_row


@torch.no_grad()
def calibrate_vae_scale(pipe, dataset, n: int = 64) -> float:
    """Set the VAE's scaling_factor to 1/std of its latents (as Stable Diffusion's 0.18215 was chosen)."""
    from gen3d.conditioning import vae_encode

    images = torch.stack([dataset[i].target_rgb for i in range(min(n, len(dataset)))]).flatten(0, 1)
    latents = vae_encode(pipe.vae, images.to(pipe.device, pipe.dtype) * 2 - 1, sample=False) / pipe.vae.config.scaling_factor
    scale = float(1.0 / latents.std())
    pipe.vae.register_to_config(scaling_factor=scale)
    return scale


def assemble(base: str, out: str, reconstructor: str = "", vae_decoder: str = "", dtype: str = "float32",
             name: str = "tiny") -> Path:
    """Combine the parts of staged runs into one gen3d checkpoint folder (what assets/tiny is).

    ``base`` gives every part; ``reconstructor`` (a gen3d folder) replaces the reconstructor and
    ``vae_decoder`` the VAE's decoder (from a ``--vae-decoder-only`` run on the same encoder, so the
    latent space is unchanged). ``dtype="float16"`` halves the files; loading casts back.
    """
    from dataclasses import replace

    from gen3d.pipeline import Gen3DPipeline

    pipe = Gen3DPipeline.from_pretrained(base)
    if reconstructor:
        pipe.reconstructor.load_state_dict(Gen3DPipeline.from_pretrained(reconstructor).reconstructor.state_dict())
    if vae_decoder:
        other = Gen3DPipeline.from_pretrained(vae_decoder).vae
        if any(not torch.equal(a, b) for a, b in zip(pipe.vae.encoder.state_dict().values(), other.encoder.state_dict().values())):
            raise ValueError(f"{vae_decoder}: its VAE encoder differs from {base}'s, so its decoder reads another latent space")
        pipe.vae.decoder.load_state_dict(other.decoder.state_dict())
        pipe.vae.post_quant_conv.load_state_dict(other.post_quant_conv.state_dict())
    pipe.config = replace(pipe.config, name=name)
    pipe.to(dtype=getattr(torch, dtype))
    return pipe.save_pretrained(out)

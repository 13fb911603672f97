"""Held-out evaluation: from one input view, how close are the final 3D renders to the ground truth?

    evaluation = evaluate(pipe, parse_seed_range("1000000-1000019"), modes=("3d", "2d"), num_inference_steps=20)
    print(evaluation.table())
    write_metrics(evaluation.to_dict(), "eval.json")      # {"3d": {...}, "2d": {...}, "n_objects": N, ...}
    save_figure(evaluation, "eval.png")

Objects. Seed s is the procedural object ``sample_object(s, domain)`` (``gen3d.data``), the object the
dataset generator writes as ``<domain>_<s:07d>``; domain "mixed" evaluates both the object and the
person of every seed. Held-out seeds start at ``HELDOUT_START`` (1,000,000); lower seeds are training
objects and are refused unless asked for. Views: the input is target view 0, the ground truth is the
4 target views and ``n_novel`` spiral views, exactly the dataset's cameras, rendered on the fly at the
pipeline's image size or read from a dataset folder (``data``) when it holds the object.

Per object and sampling mode ("3d": synchronized guidance, "2d": the 2D model alone), with the same
generator seed in both modes (``seed + object seed``), the final Gaussians are rendered at the ground
truth's cameras and size on a white background and measured:
* PSNR (dB) over RGB in [0, 1], per view, capped at 100 dB (identical images; MSE clamped at 1e-10);
* SSIM (scikit-image, data_range 1, per channel): the 11x11 Gaussian window of Wang et al. (sigma
  1.5) when the images are at least 11 px, else the largest odd uniform window that fits (>= 3 px);
* mask IoU of render alpha >= 0.5 against ground-truth alpha >= 0.5 (1 when both masks are empty);
  ">=" because the ground truth's edge coverage comes in quarters (2x2 supersampling): with "> 0.5"
  the half-covered pixels would flip with the 8-bit rounding of a dataset folder (IoU 0.91 between
  the rendered and the stored views of one object; with ">=" they agree);
* consistency_psnr: PSNR between the 2D estimates x0_tilde and the 3D renders x0_hat of the
  sampler's final pass (on the final latents) at the 4 target views.
View values are averaged per object, then object values per mode.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from gen3d.data.folder import HELDOUT_START, object_id, seed_split
from gen3d.sampler import GUIDANCE_MODES, SamplerConfig, StepRecord, psnr

DOMAINS = ("object", "avatar", "mixed")
METRICS = ("psnr_target", "ssim_target", "iou_target", "psnr_novel", "ssim_novel", "iou_novel", "consistency_psnr")
TABLE_COLUMNS = ("psnr_target", "psnr_novel", "ssim_novel", "iou_novel", "consistency_psnr")

__all__ = ["DOMAINS", "METRICS", "Evaluation", "GroundTruth", "ObjectResult", "check_seeds", "evaluate",
           "figure_image", "ground_truth", "mask_iou", "parse_seed_range", "psnr", "save_figure", "ssim"]


# ------------------------------------------------------------------------------------------- seeds
def parse_seed_range(text: str) -> list[int]:
    """"START-END" (inclusive) or a single "SEED" -> the list of seeds; ValueError on anything else."""
    parts = text.strip().split("-")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"seeds must be START-END or SEED with non-negative integers, got {text!r}")
    start, end = int(parts[0]), int(parts[-1])
    if start > end:
        raise ValueError(f"seed range {text!r} is empty: START ({start}) is greater than END ({end})")
    return list(range(start, end + 1))


def check_seeds(seeds: Sequence[int], allow_train_seeds: bool = False) -> None:
    """Refuse an empty list, negative seeds and (unless allowed) training seeds below HELDOUT_START."""
    if not seeds:
        raise ValueError("no seeds to evaluate")
    if min(seeds) < 0:
        raise ValueError(f"seeds must be non-negative, got {min(seeds)}")
    train = [s for s in seeds if seed_split(s) == "train"]
    if train and not allow_train_seeds:
        raise ValueError(f"seeds {train[0]}..{train[-1]} are training objects (held-out seeds start at "
                         f"{HELDOUT_START:,}); evaluating on them would be misleading. Use held-out seeds, "
                         "or allow training seeds explicitly (--allow-train-seeds).")


# ------------------------------------------------------------------------------------------ metrics
def _check_pair(a: Tensor, b: Tensor, channels: int | None) -> None:
    if a.ndim != 4 or a.shape != b.shape or (channels is not None and a.shape[1] != channels):
        c = "C" if channels is None else channels
        raise ValueError(f"expected two [V, {c}, H, W] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Per-view SSIM [V] of images [V, 3, H, W] in [0, 1] (window: see the module docstring)."""
    from skimage.metrics import structural_similarity

    _check_pair(a, b, 3)
    side = min(a.shape[-2:])
    if side >= 11:
        window = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    elif side >= 3:
        window = dict(win_size=side if side % 2 else side - 1)
    else:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {tuple(a.shape[-2:])}")
    x, y = a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()
    return torch.tensor([structural_similarity(u, v, channel_axis=0, data_range=1.0, **window) for u, v in zip(x, y)])


def mask_iou(alpha: Tensor, alpha_gt: Tensor, threshold: float = 0.5) -> Tensor:
    """Per-view IoU [V] of masks alpha >= threshold, alpha [V, 1, H, W]; 1 where both masks are empty."""
    _check_pair(alpha, alpha_gt, 1)
    a, b = (alpha >= threshold).flatten(1), (alpha_gt >= threshold).flatten(1)
    inter, union = (a & b).sum(1).double(), (a | b).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).float()


# ------------------------------------------------------------------------------------ ground truth
@dataclass(frozen=True)
class GroundTruth:
    """One held-out object's views at the evaluation size (all on white, CPU)."""

    object_id: str
    seed: int
    domain: str  # "object" or "avatar"
    family: str
    input_rgb: Tensor  # [3, H, W] in [0, 1]: the context image (target view 0)
    target_rgb: Tensor  # [4, 3, H, W] azimuth 0, 90, 180, 270
    target_alpha: Tensor  # [4, 1, H, W]
    target_c2w: Tensor  # [4, 4, 4] OpenGL c2w, relative frame
    novel_rgb: Tensor  # [n, 3, H, W]
    novel_alpha: Tensor  # [n, 1, H, W]
    novel_c2w: Tensor  # [n, 4, 4]


def ground_truth(seed: int, domain: str, image_size: int, n_novel: int = 8, dataset=None) -> GroundTruth:
    """Object ``seed`` of ``domain`` from ``dataset`` (a MultiViewDataset) if it holds it, else rendered."""
    from gen3d.data import object_cameras, render_object, sample_object

    spec = sample_object(seed, domain)
    oid = object_id(seed, domain)
    if dataset is not None and oid in dataset.ids:
        s = dataset[dataset.ids.index(oid)]
        return GroundTruth(oid, seed, domain, spec.family, s.input_rgb, s.target_rgb, s.target_alpha, s.target_c2w,
                           s.novel_rgb, s.novel_alpha, s.novel_c2w)
    cameras, roles = object_cameras(spec, image_size, n_novel)
    views = render_object(spec, cameras)  # the dataset writer's renderer and supersampling
    t = [i for i, r in enumerate(roles) if r == "target"]
    n = [i for i, r in enumerate(roles) if r == "novel"]
    return GroundTruth(oid, seed, domain, spec.family, views.rgb[t[0]], views.rgb[t], views.alpha[t],
                       cameras.c2w_gl[t], views.rgb[n], views.alpha[n], cameras.c2w_gl[n])


class _Source:
    """Ground truth by (seed, domain): dataset folder first (opened once per split), else rendered."""

    def __init__(self, data, image_size: int, n_novel: int):
        self.data, self.image_size, self.n_novel = data, image_size, n_novel
        self._datasets: dict[str, object] = {}

    def _dataset(self, split: str):
        if self.data is None:
            return None
        if split not in self._datasets:
            from gen3d.data import MultiViewDataset

            self._datasets[split] = MultiViewDataset(self.data, split=split, image_size=self.image_size,
                                                     n_novel=self.n_novel)
        return self._datasets[split]

    def __call__(self, seed: int, domain: str) -> GroundTruth:
        return ground_truth(seed, domain, self.image_size, self.n_novel, self._dataset(seed_split(seed)))


# ----------------------------------------------------------------------------------------- results
@dataclass
class ObjectResult:
    """The measures of one object sampled in one mode (view means; PSNR in dB)."""

    object_id: str
    seed: int
    domain: str
    family: str
    mode: str  # "3d" or "2d"
    psnr_target: float
    ssim_target: float
    iou_target: float
    psnr_novel: float
    ssim_novel: float
    iou_novel: float
    consistency_psnr: float
    seconds: float
    target_renders: Optional[Tensor] = field(default=None, repr=False)  # [4, 3, H, W] kept for figures
    novel_renders: Optional[Tensor] = field(default=None, repr=False)  # [n, 3, H, W]

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _IMAGE_FIELDS}
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}


_IMAGE_FIELDS = ("target_renders", "novel_renders")


@dataclass
class Evaluation:
    """Every (object, mode) result of one run, the settings, and the ground truth kept for figures."""

    modes: tuple[str, ...]
    rows: list[ObjectResult]
    settings: dict
    kept: dict[str, GroundTruth] = field(default_factory=dict, repr=False)  # object id -> views

    @property
    def n_objects(self) -> int:
        return len({r.object_id for r in self.rows})

    def means(self, mode: str) -> dict[str, float]:
        rows = [r for r in self.rows if r.mode == mode]
        return {m: sum(getattr(r, m) for r in rows) / len(rows) if rows else math.nan for m in METRICS}

    def to_dict(self) -> dict:
        out = {mode: {m: round(v, 4) for m, v in self.means(mode).items()} for mode in self.modes}
        out.update(n_objects=self.n_objects, settings=self.settings, objects=[r.to_dict() for r in self.rows])
        return out

    def table(self) -> str:
        """Rows: modes; columns: TABLE_COLUMNS; then the 3d - 2d difference when both ran."""
        width = max(len(c) for c in TABLE_COLUMNS) + 2
        lines = ["mode".ljust(6) + "".join(c.rjust(width) for c in TABLE_COLUMNS)]
        means = {mode: self.means(mode) for mode in self.modes}
        for mode in self.modes:
            lines.append(mode.ljust(6) + "".join(_fmt(c, means[mode][c]).rjust(width) for c in TABLE_COLUMNS))
        if {"3d", "2d"} <= set(self.modes):
            lines.append("3d-2d ".ljust(6) + "".join(_fmt(c, means["3d"][c] - means["2d"][c], signed=True).rjust(width)
                                                     for c in TABLE_COLUMNS))
        s, n = self.settings, self.n_objects
        lines.append(f"{n} object{'' if n == 1 else 's'} ({s['domain']}, seeds {s['seeds']}), "
                     f"{s['num_inference_steps']} steps, guidance scale {s['guidance_scale']:g}, "
                     f"{s['n_novel']} novel views; PSNR in dB")
        window = s.get("guidance_window", [0.0, 1.0])
        if "3d" in self.modes and list(window) != [0.0, 1.0]:
            lines.append(f"3d guidance on for steps {window[0]:.0%}-{window[1]:.0%} of the run only")
        return "\n".join(lines)


def _fmt(column: str, value: float, signed: bool = False) -> str:
    digits = 2 if "psnr" in column else 4
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


# -------------------------------------------------------------------------------------- evaluation
def render_with_alpha(pipe, gaussians, c2w: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Unbatched Gaussians at cameras c2w [V, 4, 4] (OpenGL) on white -> (rgb [V, 3, H, W], alpha [V, 1, H, W]), CPU."""
    from gen3d.cameras import Cameras
    from gen3d.render import render

    cameras = Cameras(c2w_gl=c2w.float(), width=size, height=size).to(device=pipe.device)
    out = render(gaussians.to(device=pipe.device), cameras, background=(1.0, 1.0, 1.0),
                 mode=pipe.config.render_mode, normals=False)
    return out.color.float().clamp(0, 1).cpu(), out.alpha.float().cpu()


def evaluate_object(pipe, gt: GroundTruth, config: SamplerConfig, generator: torch.Generator,
                    on_step: Optional[Callable[[StepRecord], None]] = None, keep_images: bool = False) -> ObjectResult:
    """Sample ``gt``'s input view with ``config`` and measure the final Gaussians against ``gt``."""
    from gen3d.sampler import sample

    start = time.perf_counter()
    last = None
    for last in sample(pipe, gt.input_rgb[None], config, generator):
        if on_step is not None:
            on_step(last)
    size = gt.target_rgb.shape[-1]
    target, target_alpha = render_with_alpha(pipe, last.final_gaussians, gt.target_c2w, size)
    novel, novel_alpha = render_with_alpha(pipe, last.final_gaussians, gt.novel_c2w, size)
    return ObjectResult(
        object_id=gt.object_id, seed=gt.seed, domain=gt.domain, family=gt.family, mode=config.guidance,
        psnr_target=float(psnr(target, gt.target_rgb).mean()), ssim_target=float(ssim(target, gt.target_rgb).mean()),
        iou_target=float(mask_iou(target_alpha, gt.target_alpha).mean()),
        psnr_novel=float(psnr(novel, gt.novel_rgb).mean()), ssim_novel=float(ssim(novel, gt.novel_rgb).mean()),
        iou_novel=float(mask_iou(novel_alpha, gt.novel_alpha).mean()),
        consistency_psnr=float(psnr(last.final_x0_tilde_images, last.final_images).mean()), seconds=time.perf_counter() - start,
        target_renders=target if keep_images else None, novel_renders=novel if keep_images else None)


def evaluate(
    pipe,  # gen3d.pipeline.Gen3DPipeline
    seeds: Sequence[int],
    modes: Sequence[str] = GUIDANCE_MODES,
    num_inference_steps: Optional[int] = None,  # default: the pipeline's
    guidance_scale: Optional[float] = None,  # default: the pipeline's
    domain: Optional[str] = None,  # "object" | "avatar" | "mixed"; default: the pipeline's domain
    data=None,  # a dataset folder (gen3d-multiview-v1) to read ground truth from; missing objects are rendered
    n_novel: int = 8,  # novel views per object, >= 1
    seed: int = 0,  # generator seed of object s: seed + s (the same in every mode)
    guidance_window: tuple[float, float] = (0.0, 1.0),  # of the "3d" mode: the fraction of steps it steers
    allow_train_seeds: bool = False,
    keep_images: int = 0,  # keep renders and ground truth of the first this many objects (figures)
    on_step: Optional[Callable[[StepRecord], None]] = None,  # after every sampler step
    on_result: Optional[Callable[[ObjectResult], None]] = None,  # after every (object, mode)
) -> Evaluation:
    """Evaluate ``pipe`` on procedural objects ``seeds`` in each of ``modes``; see the module docstring."""
    modes = tuple(modes)
    if not modes or any(m not in GUIDANCE_MODES for m in modes) or len(set(modes)) != len(modes):
        raise ValueError(f"modes must be distinct values of {GUIDANCE_MODES}, got {modes}")
    seeds = [int(s) for s in seeds]
    check_seeds(seeds, allow_train_seeds)
    domain = domain or pipe.config.domain
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    domains = ("object", "avatar") if domain == "mixed" else (domain,)
    if n_novel < 1:
        raise ValueError(f"n_novel must be at least 1, got {n_novel}")
    steps = num_inference_steps or pipe.config.num_inference_steps
    scale = pipe.config.guidance_scale if guidance_scale is None else guidance_scale
    configs = {m: SamplerConfig(num_inference_steps=steps, guidance_scale=scale, guidance=m,
                                guidance_window=tuple(guidance_window)) for m in modes}  # validates the window
    source = _Source(data, pipe.config.image_size, n_novel)
    settings = {"model": pipe.config.name, "seeds": f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0]),
                "domain": domain, "num_inference_steps": steps, "guidance_scale": scale, "n_novel": n_novel,
                "image_size": pipe.config.image_size, "generator_seed": seed,
                "guidance_window": [float(v) for v in guidance_window],
                "data": str(data) if data is not None else None}
    evaluation = Evaluation(modes=modes, rows=[], settings=settings)
    for index, (s, d) in enumerate((s, d) for s in seeds for d in domains):
        gt = source(s, d)
        keep = index < keep_images
        if keep:
            evaluation.kept[gt.object_id] = gt
        for mode in modes:
            generator = torch.Generator().manual_seed(seed + s)
            row = evaluate_object(pipe, gt, configs[mode], generator, on_step, keep_images=keep)
            evaluation.rows.append(row)
            if on_result is not None:
                on_result(row)
    return evaluation


# ------------------------------------------------------------------------------------------ figure
def figure_image(evaluation: Evaluation, max_objects: Optional[int] = None, cell: int = 96):
    """A PIL image of the kept objects: per object one row per mode (input | target views | novel
    views, all renders of the final Gaussians) and a ground-truth row; labels left, titles on top."""
    from PIL import Image, ImageDraw, ImageFont

    from gen3d.export import to_uint8

    objects = list(evaluation.kept.values())[:max_objects]
    if not objects:
        raise ValueError("no object images were kept (evaluate(..., keep_images=K) with K > 0)")
    size = objects[0].target_rgb.shape[-1]
    px = size * max(1, math.ceil(cell / size))  # tiles upscaled (nearest) to at least ``cell`` pixels
    pad, gap, label_w, header_h = 2, 12, 150, 24  # between tiles, between groups and objects
    n_targets, n_novel = objects[0].target_rgb.shape[0], objects[0].novel_rgb.shape[0]
    step = px + pad
    cols = [0] + [px + gap + i * step for i in range(n_targets)]
    cols += [cols[-1] + px + gap + i * step for i in range(n_novel)]
    rows = len(evaluation.modes) + 1
    block = rows * step + gap
    canvas = Image.new("RGB", (label_w + cols[-1] + px, header_h + len(objects) * block), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=14)
    for text, col in (("input", 0), (f"{n_targets} target views", 1), (f"{n_novel} novel views", 1 + n_targets)):
        draw.text((label_w + cols[col] + 2, 4), text, fill="black", font=font)
    results = {(r.object_id, r.mode): r for r in evaluation.rows}

    def paste(images: Tensor, first_col: int, y: int) -> None:
        for i, img in enumerate(to_uint8(images)):
            canvas.paste(Image.fromarray(img).resize((px, px), Image.NEAREST), (label_w + cols[first_col + i], y))

    for k, gt in enumerate(objects):
        y = header_h + k * block
        if k:
            draw.line((0, y - gap // 2, canvas.width, y - gap // 2), fill=(160, 160, 160))
        draw.text((4, y + 2), f"{gt.object_id}\n{gt.family}", fill="black", font=font)
        paste(gt.input_rgb[None], 0, y)
        labelled = [(results[(gt.object_id, m)], f"{m}: novel {results[(gt.object_id, m)].psnr_novel:.1f} dB")
                    for m in evaluation.modes]
        for r, (row, label) in enumerate(labelled):
            draw.text((4, y + r * step + px // 2), label, fill="black", font=font)
            paste(row.target_renders, 1, y + r * step)
            paste(row.novel_renders, 1 + n_targets, y + r * step)
        top = y + len(evaluation.modes) * step
        draw.text((4, top + px // 2), "ground truth", fill="black", font=font)
        paste(gt.target_rgb, 1, top)
        paste(gt.novel_rgb, 1 + n_targets, top)
    return canvas


def save_figure(evaluation: Evaluation, path, max_objects: Optional[int] = None) -> Path:
    """Write ``figure_image`` as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure_image(evaluation, max_objects).save(path)
    return path

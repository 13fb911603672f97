"""Sampler speed: the tiny preset on this machine, and what one official step costs.

    python benchmarks/sample_bench.py [--preset tiny|PATH] [--steps 50] [--threads 2] [--autocast auto|off|bfloat16]

Prints seconds per step and per run (3D-guided and 2D-only, measured in the same process), the ratio
of the two, time to the first record after the models are loaded, and peak resident memory; with
autocast on (``auto``: bfloat16 where this CPU computes it natively), the same guided run in float32
too, the speed-up and how close the two results are (PSNR of the final renders). Then
counts the FLOPs of one official guided step on the meta device (no weights needed). The tiny
preset's speed does not depend on its weights, so a random tiny model is used when the trained
checkpoint is absent (the output says which).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load(preset: str):
    from gen3d.pipeline import Gen3DPipeline, tiny_pipeline
    from gen3d.weights import WeightsError

    try:
        return Gen3DPipeline.from_pretrained(preset), preset
    except WeightsError as err:
        if preset != "tiny":
            raise
        print(f"(trained tiny checkpoint unavailable: {err}; timing the same architecture with random weights)")
        return tiny_pipeline(seed=0), "tiny architecture, random weights"


def timed_run(pipe, image, steps: int, guidance: str, autocast=None) -> dict:
    from gen3d.sampler import SamplerConfig, sample

    start = time.perf_counter()
    first, n = None, 0
    for record in sample(pipe, image, SamplerConfig(num_inference_steps=steps, guidance=guidance, autocast=autocast),
                         torch.Generator().manual_seed(0)):
        n += 1
        if first is None:
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    return {"total": total, "first": first, "per_step": total / n, "final": record.final_images}


def official_step_flops() -> dict[str, float]:
    """GFLOPs of each part of one guided step at the released sizes (counted on the meta device)."""
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    from gen3d.mv_unet import MultiViewUNet, MultiViewUNetConfig
    from gen3d.reconstructor import Reconstructor, ReconstructorConfig

    with torch.device("meta"):
        unet = MultiViewUNet(MultiViewUNetConfig.official())
        recon = Reconstructor(ReconstructorConfig.official())
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=256)
        calls = {
            "2D UNet, CFG batch 10 at 32x32": lambda: unet(
                torch.randn(10, 4, 32, 32), torch.full((10,), 501.0), torch.randn(10, 77, 1024), torch.randn(10, 16),
                torch.randn(10, 257, 1280), torch.randn(2, 4, 32, 32), num_frames=5),
            "VAE decode, 8 images 256x256": lambda: vae.decode(torch.randn(8, 4, 32, 32)),
            "reconstructor, 5 views 256x256": lambda: recon(torch.randn(1, 5, 12, 256, 256), torch.full((5,), 501.0)),
            "VAE encode, 4 renders 256x256": lambda: vae.encode(torch.randn(4, 3, 256, 256)),
        }
        for module in (unet, recon, vae):
            module.requires_grad_(False)
        flops = {}
        for name, fn in calls.items():
            counter = FlopCounterMode(display=False)
            with counter:
                fn()
            flops[name] = counter.get_total_flops() / 1e9
    return flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--autocast", default="auto", choices=("auto", "off", "bfloat16", "float16"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from gen3d.sampler import psnr, resolve_autocast

    autocast, note = resolve_autocast(args.autocast, "cpu")
    print(f"load average before: {os.getloadavg()[0]:.2f}, torch threads: {torch.get_num_threads()}; {note}")
    pipe, what = load(args.preset)
    size = pipe.config.image_size
    image = torch.ones(1, 3, size, size)
    image[..., size // 4: 3 * size // 4, size // 3: 2 * size // 3] = torch.tensor([0.8, 0.3, 0.2]).view(3, 1, 1)
    timed_run(pipe, image, 2, "3d", autocast)  # warm-up
    guided = timed_run(pipe, image, args.steps, "3d", autocast)
    plain = timed_run(pipe, image, args.steps, "2d", autocast)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{what}, {args.steps} steps, {size} px images, {pipe.reconstructor.config.num_gaussians} Gaussians, "
          f"network passes in {autocast or 'float32'}\n")
    print("| measure | 3D-guided | 2D-only |\n|---|---:|---:|")
    print(f"| whole run | {guided['total']:.2f} s | {plain['total']:.2f} s |")
    print(f"| per step | {guided['per_step'] * 1000:.0f} ms | {plain['per_step'] * 1000:.0f} ms |")
    print(f"| first record after loading | {guided['first']:.2f} s | {plain['first']:.2f} s |")
    print(f"\n3D guidance overhead (guided / 2D-only, same process): {guided['total'] / plain['total']:.2f}x")
    print(f"peak resident memory: {peak_mb:.0f} MB")
    if autocast is not None:
        timed_run(pipe, image, 2, "3d")  # warm-up of the float32 kernels
        full = timed_run(pipe, image, args.steps, "3d")
        close = psnr(guided["final"], full["final"])
        print(f"float32 guided run: {full['total']:.2f} s; {autocast} autocast is {full['total'] / guided['total']:.2f}x "
              f"faster; PSNR of its final renders against float32's: {float(close.min()):.1f}-{float(close.max()):.1f} dB")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("\nOne official guided step (released sizes), counted on the meta device:\n")
    print("| part | GFLOPs |\n|---|---:|")
    flops = official_step_flops()
    for name, value in flops.items():
        print(f"| {name} | {value:,.0f} |")
    print(f"| total (renders of 65,536 Gaussians at 512² not counted) | {sum(flops.values()):,.0f} |")


if __name__ == "__main__":
    main()

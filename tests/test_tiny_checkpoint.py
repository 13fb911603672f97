"""The shipped tiny checkpoint (assets/tiny): what its VAE keeps of a held-out object, and what it loses."""

import pytest
import torch

from gen3d.evaluate import ground_truth
from gen3d.pipeline import Gen3DPipeline

HELDOUT = (1000000, "avatar"), (1000001, "avatar"), (1000002, "object")


@pytest.fixture(scope="module")
def round_trip():
    """Targets of three held-out objects and their VAE round trips (posterior means), in [0, 1]; object pixels."""
    from gen3d.conditioning import vae_decode, vae_encode

    pipe = Gen3DPipeline.from_pretrained("tiny")
    gts = [ground_truth(seed, domain, 64, n_novel=1) for seed, domain in HELDOUT]
    images = torch.cat([gt.target_rgb for gt in gts])
    alpha = torch.cat([gt.target_alpha for gt in gts])[:, 0] > 0.5
    with torch.no_grad():
        back = vae_decode(pipe.vae, vae_encode(pipe.vae, images * 2 - 1, sample=False)).clamp(-1, 1) / 2 + 0.5
    return images, back, alpha


def test_vae_keeps_the_shapes_and_shading(round_trip):
    images, back, _ = round_trip
    psnr = -10 * torch.log10((images - back).pow(2).mean())
    assert psnr > 22, f"VAE round trip {psnr:.1f} dB"  # 24.2 dB for the shipped VAE; random weights: about 10


def _chroma_gain(images, back, alpha) -> float:
    """Least-squares slope of the reconstruction's chroma (pixel minus its grey) on the input's: 1 = kept, 0 = grey."""
    x, y = images.permute(0, 2, 3, 1)[alpha], back.permute(0, 2, 3, 1)[alpha]
    cx, cy = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    return float((cx * cy).sum() / (cx * cx).sum())


def test_chroma_gain_measures_colour():
    images = torch.rand(2, 3, 8, 8)
    alpha = torch.ones(2, 8, 8, dtype=torch.bool)
    assert _chroma_gain(images, images, alpha) == pytest.approx(1.0)
    assert abs(_chroma_gain(images, images.mean(1, keepdim=True).expand_as(images), alpha)) < 1e-6


@pytest.mark.xfail(strict=True, reason="known defect of the shipped checkpoint: its VAE learnt luminance only, so "
                                       "every output is grey (README, model card); remove this mark when a VAE "
                                       "that keeps colour ships")
def test_vae_keeps_colour(round_trip):
    gain = _chroma_gain(*round_trip)
    assert gain > 0.5, f"chroma gain {gain:.2f}"

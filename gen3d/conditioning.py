"""The conditioning parts, from the libraries made for them (spec sections 3 and 4.1).

* VAE: diffusers ``AutoencoderKL``; latents are ``encode(x).latent_dist.sample() · scaling_factor``.
* Scheduler: diffusers ``DDIMScheduler`` configured exactly as the released model was trained.
* Text: transformers ``CLIPTokenizer`` + ``CLIPTextModel`` (last hidden state, padded to 77), or for
  the small CPU model a learned constant pair of embeddings (``LearnedPromptEmbeddings``).
* Image prompt: ``CLIPVisionModel`` penultimate hidden states after the official bicubic resize
  (align_corners=True, no antialias) and CLIP normalisation.

Images handed to these functions are model space: [B, 3, H, W] in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gen3d.weights import PretrainedMixin

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
OBJECT_PROMPT = ", 3d asset photorealistic human scan"  # the official prompt, used for objects too
NEGATIVE_PROMPT = (
    "uniform low no texture ugly, boring, bad anatomy, blurry, pixelated,  obscure, unnatural colors, "
    "poor lighting, dull, and unclear."
)

# Spec 4.1: the released model's DDIM configuration.
DDIM_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", steps_offset=1, clip_sample=False, set_alpha_to_one=False,
    timestep_spacing="leading",
)


def ddim_scheduler():
    """A fresh diffusers DDIMScheduler with the released configuration."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**DDIM_CONFIG)


def _check_images(images: Tensor, name: str = "images") -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must be [B, 3, H, W] in [-1, 1], got {tuple(images.shape)}")


# -------------------------------------------------------------------------------------------------- VAE
def vae_encode(vae, images: Tensor, generator: torch.Generator | None = None, sample: bool = True) -> Tensor:
    """Images [B, 3, H, W] in [-1, 1] -> scaled latents [B, C, H/f, W/f].

    ``sample=True`` draws from the posterior as the official code does (seeded by ``generator``);
    ``sample=False`` takes its mean.
    """
    _check_images(images)
    dist = vae.encode(images.to(vae.dtype)).latent_dist
    if sample:
        noise = torch.randn(dist.mean.shape, generator=generator, device=generator.device if generator else "cpu",
                            dtype=dist.mean.dtype).to(dist.mean.device)
        latents = dist.mean + dist.std * noise
    else:
        latents = dist.mean
    return latents * vae.config.scaling_factor


def vae_decode(vae, latents: Tensor) -> Tensor:
    """Scaled latents [B, C, h, w] -> images [B, 3, H, W] in roughly [-1, 1]."""
    if latents.ndim != 4:
        raise ValueError(f"latents must be [B, C, h, w], got {tuple(latents.shape)}")
    return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample


def vae_scale_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


# ------------------------------------------------------------------------------------------ image prompt
def clip_image_input(images: Tensor, size: int) -> Tensor:
    """Model-space images -> CLIP pixel values: bicubic resize (align_corners=True, no antialias),
    back to [0, 1], CLIP mean/std normalisation (spec 3)."""
    _check_images(images)
    x = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=True)
    x = (x + 1.0) / 2.0
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def encode_image_prompt(image_encoder, images: Tensor) -> Tensor:
    """Penultimate hidden states [B, tokens, width] of a ``CLIPVisionModel`` (no post-LayerNorm)."""
    pixels = clip_image_input(images, image_encoder.config.image_size).to(image_encoder.dtype)
    out = image_encoder(pixel_values=pixels, output_hidden_states=True)
    return out.hidden_states[-2]


# ------------------------------------------------------------------------------------------------- text
class CLIPPromptEncoder:
    """Prompts -> CLIP text last hidden state [B, 77, width] (padding to max length, truncation)."""

    def __init__(self, tokenizer, text_encoder):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder

    @property
    def takes_text(self) -> bool:
        return True

    def to(self, device=None, dtype=None) -> "CLIPPromptEncoder":
        self.text_encoder.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def __call__(self, prompt: str, negative_prompt: str) -> tuple[Tensor, Tensor]:
        """(positive, negative) embeddings, each [1, 77, width]."""
        tokens = self.tokenizer([prompt, negative_prompt], padding="max_length", truncation=True,
                                max_length=self.tokenizer.model_max_length, return_tensors="pt")
        ids = tokens.input_ids.to(self.text_encoder.device)
        hidden = self.text_encoder(input_ids=ids).last_hidden_state
        return hidden[:1], hidden[1:]


@dataclass
class LearnedPromptConfig:
    num_tokens: int = 8
    width: int = 64


class LearnedPromptEmbeddings(PretrainedMixin, nn.Module):
    """A learned constant standing in for the text encoder in the small CPU model.

    The released model is always run with one fixed prompt and one fixed negative prompt, so a pair
    of learned token sequences carries the same information at a fraction of the cost; the prompt
    text is then ignored (callers are told so by ``takes_text``).
    """

    config_class = LearnedPromptConfig

    def __init__(self, config: LearnedPromptConfig):
        super().__init__()
        self.config = config
        self.positive = nn.Parameter(torch.randn(1, config.num_tokens, config.width) * 0.02)
        self.negative = nn.Parameter(torch.randn(1, config.num_tokens, config.width) * 0.02)

    @property
    def takes_text(self) -> bool:
        return False

    def forward(self, prompt: str = "", negative_prompt: str = "") -> tuple[Tensor, Tensor]:
        return self.positive, self.negative

"""The conditioning parts: DDIM configuration, VAE helpers, CLIP image input, prompt encoders."""

import pytest
import torch
from torch.testing import assert_close

from gen3d import conditioning as cond
from conftest import load_golden


def test_ddim_matches_the_spec_and_the_golden_schedule():
    sched = cond.ddim_scheduler()
    sched.set_timesteps(50)
    golden = load_golden("ddim_guided_step")
    assert torch.equal(sched.timesteps, golden["scheduler.timesteps"])
    assert sched.timesteps[0] == 981 and sched.timesteps[-1] == 1
    # alphas_cumprod in float32 exactly as the official scheduler (golden item 18)
    assert torch.equal(sched.alphas_cumprod, golden["scheduler.alphas_cumprod"])
    assert abs(float(sched.final_alpha_cumprod) - 0.99914998) < 1e-7
    assert abs(float(sched.alphas_cumprod[981]) - 0.00577550) < 1e-7


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=32, sample_size=32, scaling_factor=0.18215).eval()


def test_vae_encode_is_seeded_and_scaled():
    vae = tiny_vae()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    a = cond.vae_encode(vae, images, generator=torch.Generator().manual_seed(1))
    b = cond.vae_encode(vae, images, generator=torch.Generator().manual_seed(1))
    c = cond.vae_encode(vae, images, generator=torch.Generator().manual_seed(2))
    assert a.shape == (2, 4, 16, 16) and cond.vae_scale_factor(vae) == 2
    assert torch.equal(a, b) and not torch.equal(a, c)
    mean = cond.vae_encode(vae, images, sample=False)
    with torch.no_grad():
        expected = vae.encode(images).latent_dist.mean * 0.18215
    assert_close(mean, expected, atol=1e-6, rtol=0)
    decoded = cond.vae_decode(vae, mean)
    assert decoded.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        cond.vae_encode(vae, torch.zeros(3, 32, 32))


def test_clip_image_input_follows_the_spec():
    images = torch.rand(1, 3, 256, 256) * 2 - 1
    pixels = cond.clip_image_input(images, 224)
    assert pixels.shape == (1, 3, 224, 224)
    # align_corners=True keeps the corner pixels exactly
    expected_corner = ((images[0, :, 0, 0] + 1) / 2 - torch.tensor(cond.CLIP_MEAN)) / torch.tensor(cond.CLIP_STD)
    assert_close(pixels[0, :, 0, 0], expected_corner, atol=1e-5, rtol=0)
    white = cond.clip_image_input(torch.ones(1, 3, 64, 64), 32)
    assert_close(white[0, :, 5, 5], (1 - torch.tensor(cond.CLIP_MEAN)) / torch.tensor(cond.CLIP_STD), atol=1e-5, rtol=0)


def test_encode_image_prompt_takes_the_penultimate_layer():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                             num_attention_heads=2, image_size=32, patch_size=8)).eval()
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        features = cond.encode_image_prompt(model, images)
        out = model(pixel_values=cond.clip_image_input(images, 32), output_hidden_states=True)
    assert features.shape == (2, 17, 32)  # 16 patches + class token
    assert torch.equal(features, out.hidden_states[2])
    assert not torch.allclose(features, out.last_hidden_state)


def test_learned_prompts_round_trip(tmp_path):
    emb = cond.LearnedPromptEmbeddings(cond.LearnedPromptConfig(num_tokens=4, width=16))
    pos, neg = emb("ignored", "ignored")
    assert pos.shape == (1, 4, 16) and not torch.equal(pos, neg) and emb.takes_text is False
    emb.save_pretrained(tmp_path / "p")
    back = cond.LearnedPromptEmbeddings.from_pretrained(tmp_path / "p")
    assert torch.equal(back()[0], pos.detach())

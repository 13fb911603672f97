"""Gen3DPipeline: presets, the released layout from local folders (written here at tiny size), errors."""

import json
import time

import pytest
import torch
from safetensors.torch import save_file

from gen3d.pipeline import (
    Gen3DPipeline, fetch_file, tiny_pipeline, unet_config_from_imagedream,
)
from gen3d.weights import WeightsError
from conftest import load_golden

VOCAB = ["<unk>", "<|startoftext|>", "<|endoftext|>", "a</w>", "d</w>", "3", "3d</w>", "h", "u", "m", "a", "n</w>",
         ",</w>", "s", "c", "an</w>", "hu", "man</w>"]
MERGES = ["#version: 0.2", "3 d</w>", "a n</w>", "h u", "m an</w>"]


def write_tokenizer(folder):
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(VOCAB)}))
    (folder / "merges.txt").write_text("\n".join(MERGES) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}))


@pytest.fixture(scope="module")
def released_layout(tmp_path_factory):
    """A base folder shaped like ashawkey/imagedream-ipmv-diffusers and a checkpoint folder shaped like
    yuxuanx/gen3diffusion, both at golden-tiny size."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    root = tmp_path_factory.mktemp("released")
    base, ckpt = root / "imagedream", root / "gen3d_ckpt"
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, sample_size=32,
                  scaling_factor=0.18215).save_pretrained(base / "vae")
    CLIPVisionModel(CLIPVisionConfig(hidden_size=1280, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     image_size=32, patch_size=16)).save_pretrained(base / "image_encoder")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(VOCAB), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, max_position_embeddings=77, bos_token_id=1, eos_token_id=2,
                                 pad_token_id=2)).save_pretrained(base / "text_encoder")
    write_tokenizer(base / "tokenizer")
    unet_args = {"_class_name": "MultiViewUNetModel", "image_size": 16, "in_channels": 4, "out_channels": 4,
                 "model_channels": 32, "num_res_blocks": 2, "attention_resolutions": [1, 2], "channel_mult": [1, 1, 2],
                 "num_head_channels": 16, "context_dim": 16, "camera_dim": 16, "ip_dim": 16, "transformer_depth": 1}
    (base / "unet").mkdir()
    (base / "unet" / "config.json").write_text(json.dumps(unet_args))
    unet_golden = {k[len("weights."):]: v for k, v in load_golden("mv_unet_tiny").items() if k.startswith("weights.")}
    save_file({k: v.half() for k, v in unet_golden.items()}, str(base / "unet" / "diffusion_pytorch_model.safetensors"))
    # the fine-tuned file: everything but the camera MLP (which then comes from the base), values shifted
    ckpt.mkdir()
    finetuned = {k: v + 1.0 for k, v in unet_golden.items() if not k.startswith("camera_embed.")}
    save_file(finetuned, str(ckpt / "model.safetensors"))
    recon = {k[len("weights."):]: v for k, v in load_golden("reconstructor_tiny").items() if k.startswith("weights.")}
    recon["lpips_loss.net.slice1.0.weight"] = torch.zeros(3, 3, 3, 3)
    save_file(recon, str(ckpt / "model_1.safetensors"))
    return base, ckpt, unet_golden, recon


def test_released_layout_loads_key_for_key(released_layout):
    from gen3d.reconstructor import ReconstructorConfig

    base, ckpt, unet_golden, recon = released_layout
    pipe = Gen3DPipeline.from_pretrained(ckpt, base_dir=base, reconstructor_config=ReconstructorConfig.golden_tiny())
    unet_state = pipe.unet.state_dict()
    assert torch.equal(unet_state["input_blocks.0.0.weight"], unet_golden["input_blocks.0.0.weight"] + 1.0)
    # keys missing from the fine-tuned file keep the (fp16) base values, as the official loader does
    assert torch.equal(unet_state["camera_embed.0.weight"], unet_golden["camera_embed.0.weight"].half().float())
    assert any("kept from the ImageDream base" in n for n in pipe.notes)
    report = pipe.load_reports["reconstructor"]
    assert report.ok and report.ignored == ["lpips_loss.net.slice1.0.weight"] and len(report.loaded) == 212
    assert torch.equal(pipe.reconstructor.state_dict()["conv.weight"], recon["conv.weight"])
    assert pipe.config.domain == "object" and pipe.config.image_size == 32
    pos, neg = pipe.encode_prompt()
    assert pos.shape == (1, 77, 16) and not torch.equal(pos, neg)
    features = pipe.encode_image_prompt(torch.zeros(1, 3, 32, 32))
    assert features.shape == (1, 5, 1280)


def test_mismatched_or_corrupt_checkpoints_fail_loudly(released_layout, tmp_path):
    from gen3d.reconstructor import ReconstructorConfig

    base, ckpt, unet_golden, recon = released_layout
    bad = tmp_path / "bad_ckpt"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes())
    wrong = dict(recon)
    wrong["conv.weight"] = torch.zeros(14, 14, 3, 3)
    save_file(wrong, str(bad / "model_1.safetensors"))
    with pytest.raises(WeightsError, match=r"conv\.weight"):
        Gen3DPipeline.from_pretrained(bad, base_dir=base, reconstructor_config=ReconstructorConfig.golden_tiny())
    data = (ckpt / "model_1.safetensors").read_bytes()
    (bad / "model_1.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        Gen3DPipeline.from_pretrained(bad, base_dir=base, reconstructor_config=ReconstructorConfig.golden_tiny())
    (bad / "model_1.safetensors").write_bytes(b"\x80\x04\x95 pickle data")
    with pytest.raises(WeightsError, match="never unpickles"):
        Gen3DPipeline.from_pretrained(bad, base_dir=base, reconstructor_config=ReconstructorConfig.golden_tiny())


def test_offline_preset_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(WeightsError) as err:
        Gen3DPipeline.from_pretrained("gen3diffusion", cache_dir=tmp_path / "empty_cache")
    assert time.perf_counter() - start < 5  # no retry storm
    message = str(err.value)
    assert "yuxuanx/gen3diffusion" in message and "model.safetensors" in message and "HF_HUB_OFFLINE" in message
    with pytest.raises(WeightsError, match="looked for"):
        fetch_file("yuxuanx/gen3diffusion", "model_1.safetensors", local_dir=tmp_path)
    with pytest.raises(WeightsError, match="unknown preset"):
        Gen3DPipeline.from_pretrained(str(tmp_path / "nowhere"))


def test_gen3d_layout_round_trip(tmp_path):
    pipe = tiny_pipeline(seed=3)
    pipe.save_pretrained(tmp_path / "tiny")
    assert not list((tmp_path / "tiny").rglob("*.bin")) and not list((tmp_path / "tiny").rglob("*.pt"))
    back = Gen3DPipeline.from_pretrained(tmp_path / "tiny")
    for name, module in pipe.modules().items():
        other = back.modules()[name].state_dict()
        assert all(torch.equal(v, other[k]) for k, v in module.state_dict().items()), name
    assert back.config == pipe.config and back.latent_size == 16
    back.save_pretrained(tmp_path / "again")  # a loaded model saved again keeps no trace of where it was loaded from
    assert "_name_or_path" not in (tmp_path / "again" / "vae" / "config.json").read_text()


def test_build_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = tiny_pipeline(seed=1), tiny_pipeline(seed=1), tiny_pipeline(seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    key = "input_blocks.0.0.weight"
    assert torch.equal(a.unet.state_dict()[key], b.unet.state_dict()[key])
    assert not torch.equal(a.unet.state_dict()[key], c.unet.state_dict()[key])


def test_to_moves_every_part_together():
    pipe = tiny_pipeline().to(dtype=torch.float64)
    assert all(p.dtype == torch.float64 for m in pipe.modules().values() for p in m.parameters())
    assert pipe.dtype == torch.float64


def test_imagedream_unet_config_mapping():
    cfg = unet_config_from_imagedream({"model_channels": 32, "channel_mult": [1, 1, 2], "attention_resolutions": [1, 2],
                                       "num_head_channels": 16, "context_dim": 16, "image_size": 16,
                                       "_class_name": "MultiViewUNetModel"})
    assert cfg.channel_mult == (1, 1, 2) and cfg.ip_in_dim == 1280 and cfg.model_channels == 32

"""``Gen3DPipeline``: every part of Gen-3Diffusion in one object, loaded by preset.

Presets
* ``gen3diffusion`` (objects) and ``human3diffusion`` (people): the base parts come from the
  ImageDream repository (``ashawkey/imagedream-ipmv-diffusers``: vae, text_encoder, tokenizer,
  image_encoder, unet config), then the fine-tuned files ``model.safetensors`` (2D UNet) and
  ``model_1.safetensors`` (3D reconstructor) from the Gen-3Diffusion / Human-3Diffusion repository.
  Files come from the Hugging Face cache or the Hub, or from local folders (``checkpoint_dir`` holds
  the two fine-tuned files like the official ``--checkpoints``; ``base_dir`` an ImageDream folder).
* ``tiny``: gen3d's own small model trained on CPU (``assets/tiny``), in gen3d's layout.
* a path: a folder written by ``Gen3DPipeline.save_pretrained`` (has ``pipeline.json``) or a folder
  in the released layout (has ``model.safetensors`` and ``model_1.safetensors``).

Loading never guesses quietly: every network load is checked key for key (``LoadReport``), the LPIPS
keys the reconstructor file may carry are recognised and skipped, and a real mismatch raises. When
a file is missing the error says which, where it looked, and how to get it; in offline mode
(``HF_HUB_OFFLINE=1``) nothing tries the network.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor

from gen3d.conditioning import (
    NEGATIVE_PROMPT, OBJECT_PROMPT, CLIPPromptEncoder, LearnedPromptConfig, LearnedPromptEmbeddings, ddim_scheduler,
    encode_image_prompt, vae_decode, vae_encode, vae_scale_factor,
)
from gen3d.weights import LoadReport, WeightsError, load_state_dict_checked, read_safetensors

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PIPELINE_CONFIG_NAME = "pipeline.json"
UNET_FILE = "model.safetensors"  # accelerate's name for the first prepared model: the 2D UNet
RECONSTRUCTOR_FILE = "model_1.safetensors"  # ... and the second: the 3D reconstructor
IMAGEDREAM_REPO = "ashawkey/imagedream-ipmv-diffusers"
BASE_SUBFOLDERS = ("vae", "text_encoder", "tokenizer", "image_encoder", "unet")
UNET_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                     "model.safetensors")

BORDER_RATIO = {"object": 0.45, "avatar": 0.227}


@dataclass
class PipelineConfig:
    """What a pipeline is, apart from its weights."""

    name: str = "custom"
    domain: str = "object"  # "object" or "avatar": sets the default border ratio
    image_size: int = 256  # 2D model images and reconstructor input
    render_size: int = 512  # Gaussians are rendered at this size, then resized to image_size
    render_mode: str = "gof"  # the evaluation the reconstructor was trained with
    prompt: str = OBJECT_PROMPT
    negative_prompt: str = NEGATIVE_PROMPT
    guidance_scale: float = 5.0
    num_inference_steps: int = 50

    @property
    def border_ratio(self) -> float:
        return BORDER_RATIO[self.domain]


@dataclass(frozen=True)
class ReleasedPreset:
    repo: str
    domain: str
    base_repo: str = IMAGEDREAM_REPO


RELEASED = {
    "gen3diffusion": ReleasedPreset("yuxuanx/gen3diffusion", "object"),
    "human3diffusion": ReleasedPreset("yuxuanx/human3diffusion", "avatar"),
}
PRESETS = tuple(RELEASED) + ("tiny",)


# --------------------------------------------------------------------------------------- file lookup
def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connection to the Hub instead of the Hub client's ~23 s of retries."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def fetch_file(repo: str, filename: str, local_dir: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None, what: str = "") -> Path:
    """A file from ``local_dir`` if given, else from the Hugging Face cache, else downloaded.

    Raises ``WeightsError`` saying what is missing, where it looked and how to get it.
    """
    if local_dir is not None:
        path = Path(local_dir) / filename
        if path.is_file():
            return path
        raise WeightsError(f"{what or filename} not found: looked for {path}. Download '{filename}' from "
                           f"https://huggingface.co/{repo} into {local_dir}.")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, cache_dir=cache_dir, local_files_only=True))
    except Exception:  # not in the cache: any error of the cache lookup means "download it"
        pass
    where = f"the Hugging Face cache ({cache_dir or 'default location'})"
    if hub_offline():
        raise WeightsError(
            f"{what or filename} is not available offline: '{filename}' of {repo} is not in {where} and "
            "HF_HUB_OFFLINE=1 forbids downloading. Download it on a connected machine "
            f"(huggingface-cli download {repo} {filename}) or pass a local folder.")
    if not hub_reachable():
        raise WeightsError(
            f"{what or filename} cannot be downloaded: the Hugging Face Hub is unreachable and '{filename}' "
            f"of {repo} is not in {where}. Connect to the internet, or download it elsewhere and pass a "
            "local folder (--checkpoint-dir / --base-dir).")
    try:
        return Path(hf_hub_download(repo, filename, cache_dir=cache_dir))
    except Exception as err:
        raise WeightsError(f"downloading '{filename}' of {repo} failed: {err}") from err


def fetch_folder(repo: str, subfolder: str, local_dir: str | os.PathLike | None, cache_dir=None) -> Path:
    """A model subfolder (``vae``, ``image_encoder`` ...) locally, fetching its files if needed."""
    if local_dir is not None:
        path = Path(local_dir) / subfolder
        if (path / "config.json").is_file() or (path / "tokenizer_config.json").is_file() or (path / "vocab.json").is_file():
            return path
        raise WeightsError(f"ImageDream part '{subfolder}' not found in {local_dir} (expected {path}/config.json); "
                           f"the base folder must be a copy of https://huggingface.co/{repo}.")
    if hub_offline():
        from huggingface_hub import snapshot_download

        try:
            root = Path(snapshot_download(repo, cache_dir=cache_dir, local_files_only=True,
                                          allow_patterns=[f"{subfolder}/*"]))
        except Exception as err:
            raise WeightsError(f"'{subfolder}' of {repo} is not in the Hugging Face cache and HF_HUB_OFFLINE=1 "
                               f"forbids downloading ({err}). Download {repo} on a connected machine or pass "
                               "--base-dir.") from err
        return root / subfolder
    if not hub_reachable():
        raise WeightsError(f"the Hugging Face Hub is unreachable, so '{subfolder}' of {repo} cannot be fetched; "
                           "pass a local copy with --base-dir.")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo, cache_dir=cache_dir, allow_patterns=[f"{subfolder}/*"])) / subfolder


# ------------------------------------------------------------------------------------------ pipeline
def _drop_source_path(config_file: Path) -> None:
    """diffusers records the folder a model was loaded from (``_name_or_path``); a saved checkpoint
    should not carry the path of the machine that wrote it."""
    config = json.loads(config_file.read_text())
    if config.pop("_name_or_path", None) is not None:
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@dataclass
class Gen3DPipeline:
    """All parts of Gen-3Diffusion, moved and cast together."""

    config: PipelineConfig
    unet: torch.nn.Module  # gen3d.mv_unet.MultiViewUNet
    reconstructor: torch.nn.Module  # gen3d.reconstructor.Reconstructor
    vae: torch.nn.Module  # diffusers AutoencoderKL
    image_encoder: torch.nn.Module  # transformers CLIPVisionModel
    prompt_encoder: object  # CLIPPromptEncoder or LearnedPromptEmbeddings
    scheduler: object = field(default_factory=ddim_scheduler)
    load_reports: dict[str, LoadReport] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what loading decided (shown by the app and CLI)

    # ---------------------------------------------------------------- device and dtype
    def modules(self) -> dict[str, torch.nn.Module]:
        mods = {"unet": self.unet, "reconstructor": self.reconstructor, "vae": self.vae,
                "image_encoder": self.image_encoder}
        if isinstance(self.prompt_encoder, torch.nn.Module):
            mods["prompt_encoder"] = self.prompt_encoder
        else:
            mods["text_encoder"] = self.prompt_encoder.text_encoder
        return mods

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Gen3DPipeline":
        """Move every part; ``dtype`` float16/bfloat16 are for GPUs (float32 on CPU)."""
        for module in self.modules().values():
            current = next(module.parameters(), None)
            if dtype is None or (current is not None and current.dtype == dtype):
                module.to(device=device)  # no dtype: diffusers warns about any cast, even a no-op one
            else:
                module.to(device=device, dtype=dtype)
        return self

    def channels_last(self) -> "Gen3DPipeline":
        """Store the convolution weights of the UNet, reconstructor and VAE channels-last: their convolutions
        then run in oneDNN's / cuDNN's preferred layout (the tiny preset's 50-step run on a 2-core CPU:
        about 15 % faster). Inference only; values and saved files are unchanged."""
        for module in (self.unet, self.reconstructor, self.vae):
            module.to(memory_format=torch.channels_last)
        return self

    def eval(self) -> "Gen3DPipeline":
        for module in self.modules().values():
            module.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def latent_size(self) -> int:
        return self.config.image_size // vae_scale_factor(self.vae)

    def describe(self) -> str:
        n = sum(p.numel() for m in self.modules().values() for p in m.parameters())
        return f"{self.config.name} ({self.config.domain}, {n / 1e6:.1f} M parameters) on {self.device}, {self.dtype}"

    # ---------------------------------------------------------------- encoders
    @torch.no_grad()
    def encode_prompt(self, prompt: str | None = None, negative_prompt: str | None = None) -> tuple[Tensor, Tensor]:
        """(positive, negative) context embeddings, each [1, tokens, width]."""
        pos, neg = self.prompt_encoder(prompt if prompt is not None else self.config.prompt,
                                       negative_prompt if negative_prompt is not None else self.config.negative_prompt)
        return pos.to(self.device, self.dtype), neg.to(self.device, self.dtype)

    @torch.no_grad()
    def encode_image_prompt(self, images: Tensor) -> Tensor:
        """Model-space images [B, 3, H, W] -> CLIP penultimate features [B, tokens, width]."""
        return encode_image_prompt(self.image_encoder, images.to(self.device)).to(self.dtype)

    @torch.no_grad()
    def encode_latents(self, images: Tensor, generator: torch.Generator | None = None, sample: bool = True) -> Tensor:
        return vae_encode(self.vae, images.to(self.device), generator=generator, sample=sample).to(self.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        return vae_decode(self.vae, latents).to(self.dtype)

    # ---------------------------------------------------------------- save / load
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """gen3d's own layout: pipeline.json and one subfolder per part (safetensors everywhere)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / PIPELINE_CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2))
        self.unet.save_pretrained(directory / "unet")
        self.reconstructor.save_pretrained(directory / "reconstructor")
        self.vae.save_pretrained(directory / "vae", safe_serialization=True)
        _drop_source_path(directory / "vae" / "config.json")
        self.image_encoder.save_pretrained(directory / "image_encoder", safe_serialization=True)
        if isinstance(self.prompt_encoder, LearnedPromptEmbeddings):
            self.prompt_encoder.save_pretrained(directory / "prompt_embeddings")
        else:
            self.prompt_encoder.tokenizer.save_pretrained(directory / "tokenizer")
            self.prompt_encoder.text_encoder.save_pretrained(directory / "text_encoder", safe_serialization=True)
        return directory

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "tiny",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        checkpoint_dir: str | os.PathLike | None = None,
        base_dir: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        reconstructor_config=None,
    ) -> "Gen3DPipeline":
        """Load a preset (``gen3diffusion``, ``human3diffusion``, ``tiny``) or a local folder."""
        name = str(name_or_path)
        if name in RELEASED:
            pipe = _load_released(RELEASED[name], name, checkpoint_dir, base_dir, cache_dir, reconstructor_config)
        elif name == "tiny":
            path = ASSETS / "tiny"
            if not (path / PIPELINE_CONFIG_NAME).is_file():
                raise WeightsError(f"the tiny checkpoint is not in {path}: it is produced by `python -m gen3d train` "
                                   "and committed there; this checkout does not have it yet.")
            pipe = _load_gen3d_layout(path)
        else:
            path = Path(name)
            if (path / PIPELINE_CONFIG_NAME).is_file():
                pipe = _load_gen3d_layout(path)
            elif (path / UNET_FILE).is_file() or (path / RECONSTRUCTOR_FILE).is_file():
                domain = "avatar" if "avatar" in path.name.lower() or "human" in path.name.lower() else "object"
                preset = replace(RELEASED["gen3diffusion"], domain=domain)
                pipe = _load_released(preset, path.name, path, base_dir, cache_dir, reconstructor_config)
            elif path.exists():
                raise WeightsError(f"{path} is neither a gen3d checkpoint (no {PIPELINE_CONFIG_NAME}) nor a released "
                                   f"checkpoint folder (no {UNET_FILE} / {RECONSTRUCTOR_FILE}).")
            else:
                raise WeightsError(f"unknown preset or missing folder '{name}'; presets: {', '.join(PRESETS)}")
        return pipe.to(device=device, dtype=dtype).eval().channels_last()


# -------------------------------------------------------------------------------- building from configs
# The small CPU model: 64 px images, a 4x VAE (16x16 latents), a small CLIP vision tower, learned prompts.
TINY_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1, norm_num_groups=32, sample_size=64, scaling_factor=0.18215,
)
TINY_IMAGE_ENCODER_CONFIG = dict(hidden_size=192, intermediate_size=384, num_hidden_layers=3, num_attention_heads=3,
                                 image_size=64, patch_size=8)


def build_pipeline(config: PipelineConfig, unet_config, reconstructor_config, vae_config: dict,
                   image_encoder_config: dict, prompt_config: LearnedPromptConfig | None = None,
                   seed: int = 0) -> Gen3DPipeline:
    """A pipeline with freshly initialised weights (training from scratch, tests).

    Library constructors draw from the global RNG, so it is forked and seeded here: the same seed
    gives the same weights and the caller's RNG state is left untouched.
    """
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from gen3d.mv_unet import MultiViewUNet
    from gen3d.reconstructor import Reconstructor

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = MultiViewUNet(unet_config)
        reconstructor = Reconstructor(reconstructor_config)
        vae = AutoencoderKL(**vae_config)
        image_encoder = CLIPVisionModel(CLIPVisionConfig(**image_encoder_config))
        prompts = LearnedPromptEmbeddings(prompt_config or LearnedPromptConfig(width=unet_config.context_dim))
    return Gen3DPipeline(config=config, unet=unet, reconstructor=reconstructor, vae=vae, image_encoder=image_encoder,
                         prompt_encoder=prompts, notes=[f"{config.name}: randomly initialised (seed {seed})"])


def tiny_pipeline(seed: int = 0, name: str = "tiny-random", domain: str = "object") -> Gen3DPipeline:
    """The tiny preset's architecture with random weights (what training starts from)."""
    from gen3d.mv_unet import MultiViewUNetConfig
    from gen3d.reconstructor import ReconstructorConfig

    recon = ReconstructorConfig.tiny()
    # rendered at the image size itself (the released model renders at 2x and resizes): 4x cheaper on a CPU
    config = PipelineConfig(name=name, domain=domain, image_size=recon.input_size, render_size=recon.input_size)
    unet_config = MultiViewUNetConfig.tiny()
    return build_pipeline(config, unet_config, recon, TINY_VAE_CONFIG, TINY_IMAGE_ENCODER_CONFIG,
                          LearnedPromptConfig(num_tokens=8, width=unet_config.context_dim), seed=seed).eval()


# ------------------------------------------------------------------------------------------- loaders
def _load_gen3d_layout(path: Path) -> Gen3DPipeline:
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionModel

    from gen3d.mv_unet import MultiViewUNet
    from gen3d.reconstructor import Reconstructor
    from gen3d.weights import config_from_json

    from safetensors import SafetensorError

    for part in ("unet", "reconstructor", "vae", "image_encoder"):
        if not (path / part).is_dir():
            raise WeightsError(f"{path} is incomplete: the '{part}' folder is missing")
    part = PIPELINE_CONFIG_NAME
    try:  # diffusers and transformers raise many kinds of errors for broken folders: name the part
        config = config_from_json(PipelineConfig, (path / part).read_text(), str(path / part))
        part = "unet"
        unet = MultiViewUNet.from_pretrained(path / "unet")
        part = "reconstructor"
        reconstructor = Reconstructor.from_pretrained(path / "reconstructor")
        part = "vae"
        vae = AutoencoderKL.from_pretrained(path / "vae", use_safetensors=True)
        part = "image_encoder"
        image_encoder = CLIPVisionModel.from_pretrained(path / "image_encoder", use_safetensors=True)
        if (path / "prompt_embeddings").is_dir():
            part = "prompt_embeddings"
            prompt_encoder = LearnedPromptEmbeddings.from_pretrained(path / "prompt_embeddings")
        else:
            from transformers import CLIPTextModel, CLIPTokenizer

            part = "text_encoder"
            prompt_encoder = CLIPPromptEncoder(CLIPTokenizer.from_pretrained(path / "tokenizer"),
                                               CLIPTextModel.from_pretrained(path / "text_encoder", use_safetensors=True))
    except WeightsError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as err:
        raise WeightsError(f"{path}: cannot load '{part}': {type(err).__name__}: {err}") from err
    reports = {"unet": unet.load_report, "reconstructor": reconstructor.load_report}
    return Gen3DPipeline(config=config, unet=unet, reconstructor=reconstructor, vae=vae, image_encoder=image_encoder,
                         prompt_encoder=prompt_encoder, load_reports=reports,
                         notes=[f"loaded {config.name} from {path}"])


def unet_config_from_imagedream(data: dict):
    """The ImageDream ``unet/config.json`` (MultiViewUNetModel arguments) -> ``MultiViewUNetConfig``."""
    import dataclasses

    from gen3d.mv_unet import MultiViewUNetConfig

    names = {f.name for f in dataclasses.fields(MultiViewUNetConfig)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
    return replace(MultiViewUNetConfig.official(), **kwargs)


def _load_released(preset: ReleasedPreset, name: str, checkpoint_dir, base_dir, cache_dir,
                   reconstructor_config=None) -> Gen3DPipeline:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModel

    from gen3d.mv_unet import MultiViewUNet
    from gen3d.reconstructor import Reconstructor, ReconstructorConfig

    notes = []
    unet_file = fetch_file(preset.repo, UNET_FILE, checkpoint_dir, cache_dir, what="the fine-tuned 2D UNet")
    recon_file = fetch_file(preset.repo, RECONSTRUCTOR_FILE, checkpoint_dir, cache_dir, what="the 3D reconstructor")

    unet_dir = fetch_folder(preset.base_repo, "unet", base_dir, cache_dir) if base_dir else None
    if unet_dir is None:  # only the unet config is needed unless the fine-tuned file is incomplete
        unet_config_path = fetch_file(preset.base_repo, "unet/config.json", None, cache_dir, what="the ImageDream UNet config")
        unet_dir = unet_config_path.parent
    unet = MultiViewUNet(unet_config_from_imagedream(json.loads((unet_dir / "config.json").read_text())))
    unet.to(torch.float32)
    finetuned = read_safetensors(unet_file)
    unet_report = load_state_dict_checked(unet, finetuned, strict=False, source=str(unet_file))
    if unet_report.unexpected or unet_report.mismatched:
        raise WeightsError(f"{unet_file} does not fit the ImageDream UNet: {unet_report.summary()}")
    if unet_report.missing:  # the official loader keeps base ImageDream values for keys the file lacks
        base_file = next((unet_dir / n for n in UNET_WEIGHT_NAMES if (unet_dir / n).is_file()), None)
        if base_file is None:
            base_file = fetch_file(preset.base_repo, f"unet/{UNET_WEIGHT_NAMES[0]}", base_dir, cache_dir,
                                   what="the ImageDream base UNet")
        base = read_safetensors(base_file)
        missing = {k: base[k] for k in unet_report.missing if k in base}
        fill = load_state_dict_checked(unet, missing, strict=False, source=str(base_file))
        still = [k for k in unet_report.missing if k not in missing]
        if still or fill.mismatched:
            raise WeightsError(f"the 2D UNet is incomplete: {len(still)} keys in neither {unet_file} nor {base_file} "
                               f"(e.g. {still[:3]}); {fill.summary()}")
        notes.append(f"{len(missing)} UNet tensors not in {unet_file.name} kept from the ImageDream base")
        unet_report.loaded += fill.loaded

    reconstructor = Reconstructor(reconstructor_config or ReconstructorConfig.official())
    recon_report = load_state_dict_checked(reconstructor, read_safetensors(recon_file), strict=True, source=str(recon_file))
    if recon_report.ignored:
        notes.append(f"{len(recon_report.ignored)} LPIPS loss tensors in {recon_file.name} skipped (training only)")

    vae = AutoencoderKL.from_pretrained(fetch_folder(preset.base_repo, "vae", base_dir, cache_dir))
    image_encoder = CLIPVisionModel.from_pretrained(fetch_folder(preset.base_repo, "image_encoder", base_dir, cache_dir))
    tokenizer = CLIPTokenizer.from_pretrained(fetch_folder(preset.base_repo, "tokenizer", base_dir, cache_dir))
    text_encoder = CLIPTextModel.from_pretrained(fetch_folder(preset.base_repo, "text_encoder", base_dir, cache_dir))
    config = PipelineConfig(name=name, domain=preset.domain,
                            image_size=reconstructor.config.input_size,
                            render_size=2 * reconstructor.config.input_size)
    notes.insert(0, f"2D UNet: {unet_report.summary()}; reconstructor: {recon_report.summary()}")
    return Gen3DPipeline(config=config, unet=unet, reconstructor=reconstructor, vae=vae, image_encoder=image_encoder,
                         prompt_encoder=CLIPPromptEncoder(tokenizer, text_encoder),
                         load_reports={"unet": unet_report, "reconstructor": recon_report}, notes=notes)

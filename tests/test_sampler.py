"""The synchronized sampler: golden arithmetic of the official loop, then the stream on tiny models."""

import pytest
import torch
from torch.testing import assert_close

from gen3d.conditioning import ddim_scheduler
from gen3d.sampler import SamplerConfig, cfg_combine, eps_from_x0, predict_x0, sync_ddim
from conftest import load_golden

ATOL = 5e-5  # golden README: a float64 replay matches to 7.8e-6; same float32 ops are bit-exact


@pytest.fixture(scope="module")
def golden():
    return load_golden("ddim_guided_step")


@pytest.mark.parametrize("step", ["t981", "t501", "t1"])
def test_guided_step_matches_the_official_arithmetic(golden, step):
    x_t, eps_pair, x0_hat = (golden[f"inputs.{step}.{k}"] for k in ("x_t", "eps_pair", "x0_hat"))
    t = int(step[1:])
    sched = ddim_scheduler()
    sched.set_timesteps(50)
    alpha_bar = sched.alphas_cumprod[t]
    assert_close(alpha_bar, golden[f"outputs.{step}.alpha_prod_t"], atol=0, rtol=0)
    eps = cfg_combine(eps_pair, 5.0)
    assert_close(eps, golden[f"outputs.{step}.eps_cfg"], atol=ATOL, rtol=0)
    assert_close(predict_x0(x_t[:4], eps[:4], alpha_bar), golden[f"outputs.{step}.x0_tilde"], atol=ATOL, rtol=0)
    eps_hat = torch.cat([eps_from_x0(x_t[:4], x0_hat, alpha_bar), eps[4:]])
    assert_close(eps_hat, golden[f"outputs.{step}.eps_hat"], atol=ATOL, rtol=0)
    prev = sched.step(eps_hat, t, x_t).prev_sample
    assert_close(prev, golden[f"outputs.{step}.prev_sample"], atol=ATOL, rtol=0)


def test_whole_chain_with_final_pass(golden):
    """The 50-step loop plus the final pass, driven by the official stand-in values."""
    eps_pairs, x0_hats = golden["chain.inputs.eps_pairs"], golden["chain.inputs.x0_hats"]
    calls = {"unet": [], "lift": []}

    def predict_eps(x_t, t):
        calls["unet"].append(t)
        return cfg_combine(eps_pairs[len(calls["unet"]) - 1], 5.0)

    def lift(x_t, x0_tilde, t):
        calls["lift"].append((t, x0_tilde))
        return len(calls["lift"]) - 1

    sched = ddim_scheduler()
    sched.set_timesteps(50)
    steps = list(sync_ddim(golden["chain.inputs.x_T"], sched, predict_eps, lift, lambda i: x0_hats[i],
                           guided=lambda i: True))
    assert [s.t for s in steps] == sched.timesteps.tolist() and len(steps) == 50
    assert_close(torch.stack([s.x_prev for s in steps]), golden["chain.outputs.latents"], atol=ATOL, rtol=0)
    x0_tilde = torch.stack([x for _, x in calls["lift"]])
    assert x0_tilde.shape[0] == 51  # 50 steps and the final pass
    assert_close(x0_tilde, golden["chain.outputs.x0_tilde"], atol=ATOL, rtol=0)
    assert_close(torch.tensor(calls["unet"], dtype=torch.float32), golden["chain.outputs.unet_timesteps"])
    assert steps[-1].final_lifted == 50 and all(s.final_lifted is None for s in steps[:-1])


def test_two_d_guidance_ignores_the_renders(golden):
    eps_pairs = golden["chain.inputs.eps_pairs"]
    sched = ddim_scheduler()
    sched.set_timesteps(50)
    counter = iter(range(51))
    steps = list(sync_ddim(golden["chain.inputs.x_T"], sched, lambda x, t: cfg_combine(eps_pairs[next(counter)], 5.0),
                           lambda x, x0, t: None, lambda lifted: pytest.fail("2D mode must not re-encode"),
                           guided=lambda i: False, needs_x0_hat=lambda i: False))
    assert all(not s.guided and s.x0_hat is None for s in steps)
    assert not torch.allclose(steps[-1].x_prev, golden["chain.outputs.latents"][-1], atol=1e-3)


def test_config_validation_and_window():
    with pytest.raises(ValueError, match="guidance"):
        SamplerConfig(guidance="4d")
    with pytest.raises(ValueError, match="guidance_window"):
        SamplerConfig(guidance_window=(0.8, 0.2))
    cfg = SamplerConfig(num_inference_steps=10, guidance_window=(0.0, 0.5))
    assert [cfg.guided(i) for i in range(10)] == [True] * 5 + [False] * 5
    assert not any(SamplerConfig(guidance="2d").guided(i) for i in range(50))
    late = SamplerConfig(num_inference_steps=10, guidance_window=(0.5, 1.0))
    assert [late.guided(i) for i in range(10)] == [False] * 5 + [True] * 5


# ------------------------------------------------------------------------ the stream on tiny random models
import itertools

from gen3d.sampler import SyncModels, generate, sample


@pytest.fixture(scope="module")
def tiny_pipe():
    from gen3d.pipeline import tiny_pipeline

    return tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def tiny_image():
    g = torch.Generator().manual_seed(5)
    image = torch.ones(1, 3, 64, 64)
    image[..., 16:48, 20:44] = torch.rand(3, 1, 1, generator=g)  # a coloured box on white
    return image


def run(pipe, image, seed, **kwargs):
    return list(sample(pipe, image, SamplerConfig(num_inference_steps=kwargs.pop("steps", 4), **kwargs),
                       generator=torch.Generator().manual_seed(seed)))


def test_one_record_per_step_in_order(tiny_pipe, tiny_image):
    records = run(tiny_pipe, tiny_image, seed=0, steps=5)
    assert [r.index for r in records] == list(range(5))
    ts = [r.t for r in records]
    assert all(a > b for a, b in zip(ts, ts[1:])) and ts[-1] == 1
    assert all(r.final_gaussians is None for r in records[:-1]) and records[-1].is_last
    last = records[-1]
    n = tiny_pipe.reconstructor.config.num_gaussians
    assert len(last.final_gaussians) == n and len(last.gaussians) == n
    for r in records:
        assert r.x0_tilde_images.shape == r.x0_hat_images.shape == r.xt_images.shape == (4, 3, 64, 64)
        assert r.psnr.shape == (4,) and bool(torch.isfinite(r.psnr).all())
        assert 0 < r.alpha_bar < 1 and r.seconds > 0
        assert not r.x0_hat_images.requires_grad and r.x0_hat_images.device.type == "cpu"


def test_bfloat16_autocast_runs_the_networks_in_bfloat16_and_stays_close(tiny_pipe, tiny_image):
    """Autocast changes only the network passes: records stay float32, deterministic, near the float32 run."""
    seen = []
    hook = tiny_pipe.reconstructor.register_forward_hook(lambda m, i, o: seen.append(o.means.dtype))
    try:
        a = run(tiny_pipe, tiny_image, seed=3, steps=3, autocast="bfloat16")
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    b = run(tiny_pipe, tiny_image, seed=3, steps=3, autocast="bfloat16")
    full = run(tiny_pipe, tiny_image, seed=3, steps=3)
    assert torch.equal(a[-1].final_images, b[-1].final_images)
    assert a[-1].final_images.dtype == torch.float32 and a[-1].final_gaussians.means.dtype == torch.float32
    from gen3d.sampler import psnr

    assert float(psnr(a[-1].final_images, full[-1].final_images).min()) > 20  # close (random weights amplify), not equal
    assert not torch.equal(a[-1].final_images, full[-1].final_images)
    with pytest.raises(ValueError, match="autocast"):
        SamplerConfig(autocast="int8")


def test_autocast_auto_says_what_it_chose():
    from gen3d.sampler import fast_autocast_dtype, resolve_autocast

    chosen, note = resolve_autocast("auto", "cpu")
    assert chosen == fast_autocast_dtype("cpu") and note  # bfloat16 only where native
    assert ("natively" in note) == (chosen is not None)
    assert resolve_autocast("off", "cpu")[0] is None and resolve_autocast("auto", "cpu", "float16")[0] is None
    assert resolve_autocast("bfloat16", "cpu")[0] == "bfloat16"
    with pytest.raises(ValueError):
        resolve_autocast("fp8", "cpu")


def test_same_seed_same_records_and_stream_equals_call(tiny_pipe, tiny_image):
    a, b = run(tiny_pipe, tiny_image, seed=1), run(tiny_pipe, tiny_image, seed=1)
    for ra, rb in zip(a, b):
        assert torch.equal(ra.x0_tilde_images, rb.x0_tilde_images) and torch.equal(ra.psnr, rb.psnr)
    assert torch.equal(a[-1].final_gaussians.to_packed(), b[-1].final_gaussians.to_packed())
    c = run(tiny_pipe, tiny_image, seed=2)
    assert not torch.equal(a[-1].final_gaussians.to_packed(), c[-1].final_gaussians.to_packed())
    whole = generate(tiny_pipe, tiny_image, SamplerConfig(num_inference_steps=4), torch.Generator().manual_seed(1))
    assert torch.equal(whole.final_gaussians.to_packed(), a[-1].final_gaussians.to_packed())


def test_guided_and_two_d_differ_and_early_stop(tiny_pipe, tiny_image):
    guided, plain = run(tiny_pipe, tiny_image, seed=3), run(tiny_pipe, tiny_image, seed=3, guidance="2d")
    assert all(r.guided for r in guided) and not any(r.guided for r in plain)
    # the first step starts from the same noise; the updates then differ
    assert torch.equal(guided[0].x0_tilde_images, plain[0].x0_tilde_images)
    assert not torch.allclose(guided[1].x0_tilde_images, plain[1].x0_tilde_images)
    first_two = list(itertools.islice(sample(tiny_pipe, tiny_image, SamplerConfig(num_inference_steps=50)), 2))
    assert len(first_two) == 2 and first_two[1].index == 1


def test_resumed_from_other_threads_no_graph_and_no_leak(tiny_pipe, tiny_image):
    """gradio resumes a streaming generator from its worker threads: every step still runs without autograd,
    and the consumer's own grad mode is left alone between steps."""
    from concurrent.futures import ThreadPoolExecutor

    stream = sample(tiny_pipe, tiny_image, SamplerConfig(num_inference_steps=3), torch.Generator().manual_seed(0))
    records, consumer_grad = [], []
    for _ in range(4):  # 3 records, then the end; each next() in a fresh thread
        with ThreadPoolExecutor(1) as pool:
            record, grad = pool.submit(lambda: (next(stream, None), torch.is_grad_enabled())).result()
        consumer_grad.append(grad)
        if record is not None:
            records.append(record)
    assert len(records) == 3 and all(consumer_grad)
    for r in records:
        assert not r.psnr.requires_grad and not r.gaussians.means.requires_grad


def test_update_follows_the_spec_formulas(tiny_pipe, tiny_image):
    """Each step: x_prev = sqrt(a_prev)·x0 + sqrt(1 - a_prev)·eps_hat, with eps_hat from the renders."""
    sched = ddim_scheduler()
    sched.set_timesteps(3)
    g = torch.Generator().manual_seed(4)
    models = SyncModels(tiny_pipe, tiny_image, SamplerConfig(num_inference_steps=3), g)
    with torch.no_grad():
        steps = list(sync_ddim(models.initial_latents(), sched, models.predict_eps, models.lift,
                               models.encode_renders, guided=lambda i: True))
    ts = sched.timesteps.tolist()
    for k, step in enumerate(steps):
        a_t = sched.alphas_cumprod[step.t]
        a_prev = sched.alphas_cumprod[ts[k + 1]] if k + 1 < len(ts) else sched.final_alpha_cumprod
        assert_close(step.x0_tilde, (step.x_t[:4] - (1 - a_t).sqrt() * step.eps[:4]) / a_t.sqrt())
        eps_hat = torch.cat([(step.x_t[:4] - a_t.sqrt() * step.x0_hat) / (1 - a_t).sqrt(), step.eps[4:]])
        x0 = (step.x_t - (1 - a_t).sqrt() * eps_hat) / a_t.sqrt()
        assert_close(x0[:4], step.x0_hat, atol=1e-4, rtol=1e-4)  # the 3D estimate is what drives the update
        assert_close(step.x_prev, a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps_hat, atol=1e-5, rtol=1e-5)


def test_one_guided_step_at_the_official_sizes_on_meta():
    """UNet with CFG, VAE decode, reconstructor, 512² renders, resize and re-encode at the released
    shapes, on the meta device: a GPU user never meets a shape or dtype error after the download."""
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from gen3d.conditioning import LearnedPromptConfig, LearnedPromptEmbeddings
    from gen3d.mv_unet import MultiViewUNet, MultiViewUNetConfig
    from gen3d.pipeline import Gen3DPipeline, PipelineConfig
    from gen3d.reconstructor import Reconstructor, ReconstructorConfig

    with torch.device("meta"):
        pipe = Gen3DPipeline(
            config=PipelineConfig(name="official-shapes"),
            unet=MultiViewUNet(MultiViewUNetConfig.official()),
            reconstructor=Reconstructor(ReconstructorConfig.official()),
            vae=AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                              up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=256,
                              scaling_factor=0.18215),
            image_encoder=CLIPVisionModel(CLIPVisionConfig(hidden_size=1280, intermediate_size=5120,
                                                           num_hidden_layers=32, num_attention_heads=16,
                                                           image_size=224, patch_size=14)),
            prompt_encoder=LearnedPromptEmbeddings(LearnedPromptConfig(num_tokens=77, width=1024)))
    assert pipe.latent_size == 32 and pipe.config.render_size == 512
    models = SyncModels(pipe, torch.ones(1, 3, 256, 256), SamplerConfig(num_inference_steps=1), torch.Generator())
    assert models.context.shape == (10, 77, 1024) and models.ip_tokens.shape == (10, 16, 1024)
    sched = ddim_scheduler()
    sched.set_timesteps(1)
    (step,) = list(sync_ddim(models.initial_latents(), sched, models.predict_eps, models.lift, models.encode_renders,
                             guided=lambda i: True))
    assert step.x_prev.shape == (5, 4, 32, 32) and step.x_prev.is_meta and step.x_prev.dtype == torch.float32
    assert step.x0_hat.shape == (4, 4, 32, 32)
    assert step.lifted.renders.shape == (4, 3, 256, 256) and step.lifted.x0_images.shape == (4, 3, 256, 256)
    assert step.final_lifted.gaussians.means.shape == (1, 65536, 3)

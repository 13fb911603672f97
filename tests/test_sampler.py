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

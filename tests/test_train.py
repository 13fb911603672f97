"""Joint training (Algorithm 1) on a tiny procedural dataset: the loss falls, checkpoints resume."""

import json

import pytest
import torch

from gen3d.train import TrainConfig, joint_losses, load_optimizer, save_optimizer, train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from gen3d.data import split_seeds, write_dataset

    root = tmp_path_factory.mktemp("data")
    write_dataset(root, split_seeds("train", 1) + split_seeds("heldout", 1), image_size=64, n_novel=2)
    return root


def eval_loss(pipe, data, config):
    from gen3d.data import MultiViewDataset, collate

    batch = collate([MultiViewDataset(data, split="train", n_novel=2)[0]])
    with torch.no_grad():
        losses = joint_losses(pipe, batch, config, torch.Generator().manual_seed(123))
    return float(losses["l3d_rgb"] + losses["l3d_alpha"])


def test_a_few_steps_on_one_object_lower_the_3d_loss(dataset, tmp_path):
    from gen3d.pipeline import Gen3DPipeline, tiny_pipeline

    config = TrainConfig(data=str(dataset), out=str(tmp_path / "run"), steps=6, batch_size=1, n_novel=2,
                         train_2d=False, x0_source="gt", lr_3d=2e-3, warmup_steps=1, checkpoint_every=3,
                         sample_every=0, log_every=1)
    before = eval_loss(tiny_pipeline(seed=0, name="tiny"), dataset, config)
    train(config)
    after = eval_loss(Gen3DPipeline.from_pretrained(tmp_path / "run" / "checkpoint" / "pipeline"), dataset, config)
    assert after < 0.8 * before, (before, after)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7)) and "l3d_rgb" in rows[0]
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 0


def test_resume_continues_from_the_checkpoint(dataset, tmp_path):
    config = TrainConfig(data=str(dataset), out=str(tmp_path / "run"), steps=2, batch_size=1, n_novel=2,
                         checkpoint_every=1, sample_every=0, log_every=1, warmup_steps=1)
    train(config)
    info = json.loads((tmp_path / "run" / "checkpoint" / "trainer.json").read_text())
    assert info["step"] == 2 and not list((tmp_path / "run").rglob("*.bin")) and not list((tmp_path / "run").rglob("*.pt"))
    train(TrainConfig(**{**config.__dict__, "steps": 3}))
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # resumed at 2, not restarted
    assert "l2d" in rows[-1] and json.loads((tmp_path / "run" / "checkpoint" / "trainer.json").read_text())["step"] == 3


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.AdamW(params, lr=1e-3)
    sum((p ** 2).sum() for p in params).backward()
    opt.step()
    save_optimizer(opt, tmp_path)
    other = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params], lr=5.0)
    load_optimizer(other, tmp_path)
    a, b = opt.state_dict(), other.state_dict()
    assert b["param_groups"][0]["lr"] == 1e-3
    for i in a["state"]:
        for k, v in a["state"][i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][i][k])), k


def test_config_is_validated():
    with pytest.raises(ValueError, match="stage"):
        TrainConfig(data="d", out="o", stage="everything")
    with pytest.raises(ValueError, match="nothing to train"):
        TrainConfig(data="d", out="o", train_2d=False, train_3d=False)


def test_assemble_combines_staged_runs(tmp_path):
    from gen3d.pipeline import Gen3DPipeline, tiny_pipeline
    from gen3d.train import assemble

    a, b = tiny_pipeline(seed=0), tiny_pipeline(seed=1)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    decoder_run = tiny_pipeline(seed=0)  # same encoder as a, decoder refined
    with torch.no_grad():
        for p in decoder_run.vae.decoder.parameters():
            p.add_(0.01)
    decoder_run.save_pretrained(tmp_path / "dec")
    assemble(str(tmp_path / "a"), str(tmp_path / "out"), reconstructor=str(tmp_path / "b"),
             vae_decoder=str(tmp_path / "dec"), dtype="float16")
    out = Gen3DPipeline.from_pretrained(tmp_path / "out")
    assert out.dtype == torch.float32  # loading casts the float16 files back
    for p, q in zip(out.reconstructor.parameters(), b.reconstructor.parameters()):
        torch.testing.assert_close(p, q.half().float())
    for p, q in zip(out.unet.parameters(), a.unet.parameters()):
        torch.testing.assert_close(p, q.half().float())
    for p, q in zip(out.vae.decoder.parameters(), decoder_run.vae.decoder.parameters()):
        torch.testing.assert_close(p, q.half().float())
    with pytest.raises(ValueError, match="latent space"):  # b's encoder differs from a's
        assemble(str(tmp_path / "a"), str(tmp_path / "bad"), vae_decoder=str(tmp_path / "b"))


def test_geometry_supervision_is_zero_for_the_ground_truth_gaussians_only(dataset):
    """Gaussians built from ground-truth depth, colour and coverage have no geometry loss; moving,
    recolouring or hiding them costs; without depth maps it refuses."""
    import dataclasses

    import torch.nn.functional as F

    from gen3d.cameras import Cameras
    from gen3d.data import MultiViewDataset, collate
    from gen3d.gaussians import Gaussians
    from gen3d.train import geometry_losses

    batch = collate([MultiViewDataset(dataset, split="train", n_novel=2)[0]])
    B, V, _, H, W = batch.target_rgb.shape
    S = H // 2
    cams = Cameras(c2w_gl=batch.target_c2w.flatten(0, 1), width=W, height=H)
    depth, rgb = batch.target_depth.flatten(0, 1), batch.target_rgb.flatten(0, 1)
    mask = ((batch.target_alpha.flatten(0, 1) > 0.5) & (depth > 0)).float()
    cover = F.avg_pool2d(mask, 2)
    safe = cover.clamp_min(1e-6)
    xyz = F.avg_pool2d(cams.unproject(depth[:, 0]).permute(0, 3, 1, 2) * mask, 2) / safe
    col, z = F.avg_pool2d(rgb * mask, 2) / safe, F.avg_pool2d(depth * mask, 2) / safe
    flat = lambda x: x.permute(0, 2, 3, 1).reshape(B, V * S * S, -1)  # noqa: E731  view, row, column
    n = V * S * S
    truth = Gaussians(means=flat(xyz), quats=torch.tensor([1.0, 0, 0, 0]).expand(B, n, 4).contiguous(),
                      scales=flat(0.35 * 2 * z / cams.fy).expand(-1, -1, 3).clamp_min(1e-6).contiguous(),
                      opacities=flat(cover)[..., 0], colors=flat(col))
    assert float(geometry_losses(truth, batch, S)) < 1e-6
    assert bool((cover > 0.5).any())
    shifted = Gaussians(**{**truth.__dict__, "means": truth.means + 0.05})
    assert float(geometry_losses(shifted, batch, S)) > 1.0  # 10 x L1 of 3 x 0.05
    recoloured = Gaussians(**{**truth.__dict__, "colors": 1 - truth.colors})
    hidden = Gaussians(**{**truth.__dict__, "opacities": torch.zeros_like(truth.opacities)})
    assert float(geometry_losses(recoloured, batch, S)) > 0.01 and float(geometry_losses(hidden, batch, S)) > 0.01
    nodepth = dataclasses.replace(batch, has_depth=(False,))
    with pytest.raises(ValueError, match="depth"):
        geometry_losses(truth, nodepth, S)


def test_geometry_only_steps_lower_the_geometry_loss(dataset, tmp_path):
    from gen3d.pipeline import Gen3DPipeline, tiny_pipeline

    config = TrainConfig(data=str(dataset), out=str(tmp_path / "run"), steps=6, batch_size=1, n_novel=0, render_views=0,
                         train_2d=False, x0_source="gt", lambda_geometry=1.0, lr_3d=2e-3, warmup_steps=1,
                         checkpoint_every=6, sample_every=0, log_every=1)

    def geometry(pipe):
        from gen3d.data import MultiViewDataset, collate

        batch = collate([MultiViewDataset(dataset, split="train", n_novel=0)[0]])
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # as --mixed-precision bf16 runs it
            losses = joint_losses(pipe, batch, config, torch.Generator().manual_seed(123))
        assert set(losses) == {"l3d_geometry"}  # nothing rendered
        assert losses["l3d_geometry"].dtype == torch.float32  # the loss is taken in float32 under autocast
        return float(losses["l3d_geometry"])

    before = geometry(tiny_pipeline(seed=0, name="tiny"))
    train(config)
    after = geometry(Gen3DPipeline.from_pretrained(tmp_path / "run" / "checkpoint" / "pipeline"))
    assert after < 0.7 * before, (before, after)


def test_t_power_favours_low_noise_and_is_validated():
    from gen3d.pipeline import tiny_pipeline
    from gen3d.train import diffusion_inputs

    pipe = tiny_pipeline(seed=0)
    z0 = torch.zeros(512, 4, 4, 2, 2)
    uniform = diffusion_inputs(pipe, z0, torch.Generator().manual_seed(0))[0].float()
    low = diffusion_inputs(pipe, z0, torch.Generator().manual_seed(0), t_power=2.0)[0].float()
    assert 400 < uniform.mean() < 600 and 250 < low.mean() < 420  # E[u^2] = 1/3
    assert 0 <= low.min() and low.max() <= 999
    with pytest.raises(ValueError, match="t_power"):
        TrainConfig(data="d", out="o", t_power=0.0)


def test_chroma_term_sees_grey_reconstructions(dataset):
    """A VAE that returns its input scores 0 on the chroma term; one that returns the input's grey
    version scores lambda_chroma x the chroma's variance; plain MSE would charge it far less."""
    from types import SimpleNamespace

    from gen3d.data import MultiViewDataset, collate
    from gen3d.train import vae_losses

    class FakeVAE:
        def __init__(self, grey: bool):
            self.grey = grey

        def encode(self, x):
            return SimpleNamespace(latent_dist=SimpleNamespace(mean=x, std=torch.zeros_like(x),
                                                               kl=lambda: torch.zeros(x.shape[0])))

        def decode(self, z):
            return SimpleNamespace(sample=z.mean(1, keepdim=True).expand_as(z) if self.grey else z)

    batch = collate([MultiViewDataset(dataset, split="train", n_novel=2)[0]])
    config = TrainConfig(data=str(dataset), out="unused", stage="vae", lambda_chroma=5.0)
    views = torch.cat([batch.target_rgb.flatten(0, 1), batch.novel_rgb.flatten(0, 1)]) * 2 - 1
    chroma_var = float((views - views.mean(1, keepdim=True)).pow(2).mean())
    assert chroma_var > 1e-3  # the procedural objects are coloured
    pipe = lambda grey: SimpleNamespace(vae=FakeVAE(grey), device=torch.device("cpu"), dtype=torch.float32)  # noqa: E731
    generator = torch.Generator().manual_seed(0)
    assert float(vae_losses(pipe(False), batch, config, generator)["chroma"]) == 0.0
    grey = vae_losses(pipe(True), batch, config, generator)
    assert float(grey["chroma"]) == pytest.approx(5.0 * chroma_var, rel=1e-5)
    off = TrainConfig(data=str(dataset), out="unused", stage="vae")
    assert "chroma" not in vae_losses(pipe(True), batch, off, generator)

"""Held-out evaluation: metrics on known inputs, ground truth from a folder or rendered, and
`python -m gen3d evaluate` end to end on the tiny random model (1 step, so the numbers are those of
an untrained model: only their structure and ranges are checked)."""

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch

from gen3d.cli import main
from gen3d.evaluate import check_seeds, ground_truth, mask_iou, parse_seed_range, psnr, ssim

HELDOUT = 1_000_000
MODES_KEYS = {"psnr_target", "psnr_novel", "ssim_novel", "iou_novel", "consistency_psnr"}


# ------------------------------------------------------------------------------------------ metrics
def test_psnr_known_values():
    a = torch.full((2, 3, 8, 8), 0.5)
    assert torch.equal(psnr(a, a), torch.full((2,), 100.0))  # identical: capped (MSE clamped at 1e-10)
    torch.testing.assert_close(psnr(a, a + 0.1), torch.full((2,), 20.0))  # MSE 0.01 -> 20 dB
    b = a.clone()
    b[1] += 0.01  # MSE 1e-4 -> 40 dB, per view
    torch.testing.assert_close(psnr(a, b), torch.tensor([100.0, 40.0]))


def test_ssim_identical_and_different(generator):
    a = torch.rand(2, 3, 32, 32, generator=generator)
    torch.testing.assert_close(ssim(a, a), torch.ones(2, dtype=torch.float64))
    noisy = (a + 0.2 * torch.randn(a.shape, generator=generator)).clamp(0, 1)
    values = ssim(a, noisy)
    assert ((values > 0) & (values < 0.95)).all()
    assert ssim(a[:, :, :5, :5], a[:, :, :5, :5]).tolist() == pytest.approx([1.0, 1.0])  # uniform 5x5 window
    with pytest.raises(ValueError, match="3x3"):
        ssim(a[:, :, :2, :2], a[:, :, :2, :2])
    with pytest.raises(ValueError, match=r"\[V, 3, H, W\]"):
        ssim(a, a[:1])


def test_mask_iou_known_masks():
    gt = torch.zeros(3, 1, 4, 4)
    gt[:, :, :2, :2] = 1.0  # 4 pixels
    pred = torch.zeros(3, 1, 4, 4)
    pred[0, :, :2, :2] = 0.5  # exactly half covered counts as inside: the same 4 pixels -> 1
    pred[1, :, :2, 1:3] = 0.9  # 2 shared of 6 -> 1/3
    # view 2: empty prediction -> 0
    torch.testing.assert_close(mask_iou(pred, gt), torch.tensor([1.0, 1 / 3, 0.0]))
    empty = torch.zeros(1, 1, 4, 4)
    assert mask_iou(empty, empty).tolist() == [1.0]  # nothing to find, nothing found


def test_seed_ranges():
    assert parse_seed_range("1000000-1000002") == [HELDOUT, HELDOUT + 1, HELDOUT + 2]
    assert parse_seed_range(" 1000005 ") == [HELDOUT + 5]
    for bad in ("5-3", "a-b", "1-2-3", "-4", "1.5-2", ""):
        with pytest.raises(ValueError):
            parse_seed_range(bad)
    with pytest.raises(ValueError, match="training objects"):
        check_seeds([999_999, HELDOUT])
    check_seeds([3, 4], allow_train_seeds=True)
    check_seeds([HELDOUT])


# ------------------------------------------------------------------------------------- ground truth
def test_ground_truth_from_folder_matches_rendering(tmp_path):
    from gen3d.data import MultiViewDataset, write_dataset

    write_dataset(tmp_path, [HELDOUT + 3], image_size=32, domain="object", n_novel=2)
    folder = ground_truth(HELDOUT + 3, "object", 32, 2, MultiViewDataset(tmp_path, "heldout", 32, 2))
    rendered = ground_truth(HELDOUT + 3, "object", 32, 2)
    assert folder.object_id == rendered.object_id == "object_1000003"
    assert rendered.target_rgb.shape == (4, 3, 32, 32) and rendered.novel_alpha.shape == (2, 1, 32, 32)
    torch.testing.assert_close(folder.novel_c2w, rendered.novel_c2w, atol=1e-6, rtol=0)
    assert torch.equal(rendered.input_rgb, rendered.target_rgb[0])
    # the folder stores 8-bit straight alpha: colours agree to the rounding, masks exactly
    assert (psnr(folder.novel_rgb, rendered.novel_rgb) > 45).all()
    assert mask_iou(folder.target_alpha, rendered.target_alpha).tolist() == [1.0] * 4


# ----------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One `evaluate` run (both modes, 1 step without CFG, 2 novel views) on the tiny random model."""
    import gen3d.pipeline
    from gen3d.pipeline import tiny_pipeline

    pipe = tiny_pipeline(seed=0)
    out = tmp_path_factory.mktemp("eval")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(gen3d.pipeline, "tiny_pipeline", lambda seed=0: pipe)  # build the random model once
        code = main(["evaluate", "--preset", "tiny-random", "--seeds", "1000000-1000000", "--steps", "1",
                     "--cfg", "1", "--novel", "2", "--device", "cpu", "--json", str(out / "eval.json"),
                     "--figure", str(out / "eval.png")])
    return code, out, printed.getvalue()


def test_cli_writes_json_with_required_figures(cli_run):
    code, out, _ = cli_run
    assert code == 0
    figures = json.loads((out / "eval.json").read_text())
    assert figures["n_objects"] == 1 and len(figures["objects"]) == 2
    assert figures["settings"]["num_inference_steps"] == 1 and figures["settings"]["n_novel"] == 2
    assert figures["settings"]["guidance_scale"] == 1.0
    for mode in ("3d", "2d"):
        m = figures[mode]
        assert MODES_KEYS <= set(m), set(m)
        assert all(math.isfinite(v) for v in m.values())
        assert 0 < m["psnr_target"] < 100 and 0 < m["psnr_novel"] < 100 and 0 < m["consistency_psnr"] < 100
        assert -1 <= m["ssim_novel"] <= 1 and 0 <= m["iou_novel"] <= 1
    # same seed, same object, different guidance: the final Gaussians differ, and so do the figures
    # (consistency_psnr is measured on the last step's x0_tilde / x0_hat, before its update: with one step
    # that is the shared first step, so it is the same in both modes here)
    assert figures["3d"]["psnr_novel"] != figures["2d"]["psnr_novel"]
    assert figures["3d"]["iou_novel"] != figures["2d"]["iou_novel"]
    rows = {r["mode"]: r for r in figures["objects"]}
    assert rows["3d"]["object_id"] == rows["2d"]["object_id"] == "object_1000000"


def test_cli_prints_table_and_writes_figure(cli_run):
    from PIL import Image

    from gen3d.export import to_uint8

    code, out, printed = cli_run
    table = printed[printed.index("mode "):].splitlines()
    figures = json.loads((out / "eval.json").read_text())
    assert [line.split()[0] for line in table[1:4]] == ["3d", "2d", "3d-2d"]
    assert table[1].split()[2] == f"{figures['3d']['psnr_novel']:.2f}"
    figure = np.asarray(Image.open(out / "eval.png").convert("RGB"))
    # the input tile (64 px shown at 128, nearest) sits at the top left, after the label column and title row
    expected = to_uint8(ground_truth(HELDOUT, "object", 64, 2).input_rgb)
    np.testing.assert_array_equal(figure[24:24 + 128:2, 150:150 + 128:2], expected)
    assert figure.shape[0] > 3 * 128  # rows 3d, 2d and ground truth


def test_cli_table_text():
    from gen3d.evaluate import Evaluation, ObjectResult

    rows = [ObjectResult("object_1000000", HELDOUT, "object", "car", mode, *([v] * 7), seconds=1.0)
            for mode, v in (("3d", 0.75), ("2d", 0.5))]
    evaluation = Evaluation(("3d", "2d"), rows, {"domain": "object", "seeds": "1000000", "num_inference_steps": 1,
                                                 "guidance_scale": 5.0, "n_novel": 8})
    lines = evaluation.table().splitlines()
    assert lines[0].split() == ["mode", "psnr_target", "psnr_novel", "ssim_novel", "iou_novel", "consistency_psnr"]
    assert lines[1].split() == ["3d", "0.75", "0.75", "0.7500", "0.7500", "0.75"]
    assert lines[3].split() == ["3d-2d", "+0.25", "+0.25", "+0.2500", "+0.2500", "+0.25"]
    assert evaluation.to_dict()["2d"]["iou_novel"] == 0.5 and evaluation.to_dict()["n_objects"] == 1


@pytest.mark.parametrize("seeds, message", [("1000005-1000001", "greater than END"), ("one-two", "START-END"),
                                            ("10-20", "training objects")])
def test_cli_rejects_bad_seed_ranges(seeds, message, tmp_path, capsys, monkeypatch):
    import gen3d.pipeline

    def no_model(*args, **kwargs):
        raise AssertionError("the seeds must be checked before any model is loaded")

    monkeypatch.setattr(gen3d.pipeline, "tiny_pipeline", no_model)
    assert main(["evaluate", "--preset", "tiny-random", "--seeds", seeds, "--json", str(tmp_path / "x.json")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_guidance_window_reaches_the_3d_mode(generator):
    from gen3d.evaluate import evaluate
    from gen3d.pipeline import tiny_pipeline

    pipe = tiny_pipeline(seed=0)
    kwargs = dict(num_inference_steps=2, guidance_scale=1.0, domain="object", n_novel=1)
    off = evaluate(pipe, [HELDOUT], guidance_window=(0.0, 0.0), **kwargs)  # 3d mode, but no step steered
    assert off.settings["guidance_window"] == [0.0, 0.0]
    assert off.means("3d") == off.means("2d")
    full = evaluate(pipe, [HELDOUT], modes=("3d",), **kwargs)
    assert full.means("3d")["psnr_novel"] != off.means("3d")["psnr_novel"]
    assert "3d guidance on for steps 0%-0%" in off.table()


def test_cli_rejects_bad_guidance_window(capsys):
    assert main(["evaluate", "--preset", "tiny-random", "--seeds", "1000000", "--guidance-window", "0.8", "0.2"]) == 2
    assert "--guidance-window" in capsys.readouterr().err


def test_cli_rejects_bad_modes(capsys):
    assert main(["evaluate", "--preset", "tiny-random", "--seeds", "1000000", "--modes", "3d,4d"]) == 2
    assert "--modes" in capsys.readouterr().err

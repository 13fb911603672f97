"""`python -m gen3d infer` end to end on a tiny random model saved in the gen3d layout."""

import json

import pytest

from gen3d.cli import main
from conftest import IMAGES


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from gen3d.pipeline import tiny_pipeline

    return tiny_pipeline(seed=0).save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny")


def test_infer_writes_everything_and_reports_bad_files(tiny_folder, tmp_path):
    from gen3d.gaussians import load_ply

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "shoe.png").write_bytes((IMAGES / "objects" / "object_0.png").read_bytes())
    (inputs / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    args = ["infer", str(inputs), "--out", str(out), "--preset", str(tiny_folder), "--steps", "2",
            "--turntable-frames", "4", "--device", "cpu"]
    assert main(args) == 1  # one input failed
    result = out / "shoe"
    for name in ("gs.ply", "input.png", "views.png", "turntable.mp4", "trajectory.mp4", "metrics.json"):
        assert (result / name).stat().st_size > 0, name
    assert not (out / "broken").exists()
    metrics = json.loads((result / "metrics.json").read_text())
    assert metrics["steps"] == 2 and len(metrics["trajectory"]["t"]) == 2 and metrics["guidance"] == "3d"
    stats = metrics["final_gaussians"]
    assert len(load_ply(result / "gs.ply")) == round(stats["count"] * stats["visible_fraction"])
    from PIL import Image

    assert Image.open(result / "views.png").size == (8 * 128, 4 * 128)
    before = (result / "gs.ply").stat().st_mtime_ns
    assert main(["infer", str(inputs / "shoe.png"), "--out", str(out), "--preset", str(tiny_folder), "--steps", "2"]) == 0
    assert (result / "gs.ply").stat().st_mtime_ns == before  # kept without --overwrite


def test_infer_bad_preset_and_missing_input(tmp_path, capsys):
    assert main(["infer", str(tmp_path / "nothing.png"), "--out", str(tmp_path), "--preset", str(tmp_path / "nope")]) == 2
    assert "cannot load" in capsys.readouterr().err

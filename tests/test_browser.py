"""A real browser (Playwright driving Debian's Chromium) shows gen3d's .ply in gradio's Model3D viewer."""

import shutil

import numpy as np
import pytest
import torch

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium not installed (.ci/run installs it)")


def sphere_of_gaussians(n: int = 4000):
    """A ball of small Gaussians coloured by position (red +x, green +y, blue +z)."""
    from gen3d.gaussians import Gaussians

    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = 0.4 * d
    return Gaussians(means=means, quats=torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4).clone(),
                     scales=torch.full((n, 3), 0.02), opacities=torch.full((n,), 0.9), colors=d * 0.5 + 0.5)


def test_model3d_shows_a_gen3d_ply(tmp_path):
    import gradio as gr
    from playwright.sync_api import sync_playwright

    from gen3d.gaussians import rotate_x_180, save_ply

    ply = save_ply(rotate_x_180(sphere_of_gaussians()), tmp_path / "ball.ply")  # the viewer's up is -y
    with gr.Blocks() as demo:
        gr.Model3D(value=str(ply), label="splat", elem_id="viewer", height=400)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, allowed_paths=[str(tmp_path)])
    errors = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(demo.local_url, wait_until="networkidle")
            canvas = page.locator("#viewer canvas")
            canvas.first.wait_for(state="visible", timeout=30000)
            page.wait_for_timeout(6000)  # software WebGL needs a few seconds to draw the splats
            shot = tmp_path / "model3d.png"
            canvas.first.screenshot(path=str(shot))
            browser.close()
    finally:
        demo.close()
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.float32)
    colourful = (pixels.max(axis=-1) - pixels.min(axis=-1)) > 60  # the ball is saturated, the background grey/white
    assert colourful.mean() > 0.01, "the splat viewer drew nothing"
    assert not [e for e in errors if "favicon" not in e], errors
    # +y (green) must be up on screen: the top half of the ball greener than the bottom half
    ys, xs = np.nonzero(colourful)
    mid = (ys.min() + ys.max()) / 2
    green = pixels[..., 1] - pixels[..., [0, 2]].mean(axis=-1)
    assert green[ys[ys < mid], xs[ys < mid]].mean() > green[ys[ys > mid], xs[ys > mid]].mean() + 20
    shutil.copy(shot, tmp_path.parent / "model3d_last.png")

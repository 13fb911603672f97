"""A real browser (Playwright driving Debian's Chromium) shows gen3d's .ply in gradio's Model3D viewer."""

import shutil

import numpy as np
import pytest
import torch

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium not installed (.ci/run installs it)")


def open_page(playwright, width: int, height: int, errors: list):
    """Debian's Chromium with a page that records console errors and page errors into ``errors``."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    page = browser.new_page(viewport={"width": width, "height": height})
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return browser, page


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
            browser, page = open_page(p, 900, 700, errors)
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


def test_app_page_example_generate_and_viewer(tmp_path):
    """Open the app, pick an example, generate live: a new panel per step streams in, the viewer draws, no errors."""
    from playwright.sync_api import sync_playwright

    import app
    from gen3d.demo import ModelManager
    from gen3d.pipeline import tiny_pipeline

    app.configure(preset="tiny", manager=ModelManager(device="cpu", loader=lambda name: tiny_pipeline(seed=0)),
                  outputs=tmp_path / "outputs")
    demo = app.build_demo().queue(default_concurrency_limit=1, max_size=8)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(tmp_path / "outputs"), str(app.EXAMPLES)])
    errors, shots = [], tmp_path.parent / "app_screens"
    shots.mkdir(exist_ok=True)
    try:
        with sync_playwright() as p:
            browser, page = open_page(p, 1280, 2400, errors)
            page.goto(demo.local_url, wait_until="load", timeout=60000)  # the page keeps a stream open: no "networkidle"
            page.get_by_label("mushroom").check()  # an example opens instantly, with its recorded trajectory
            page.get_by_text("Precomputed example").wait_for(timeout=30000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(shots / "1_example.png"), full_page=False, timeout=120000)  # software WebGL makes screenshots slow under load
            page.get_by_label("Denoising steps").first.fill("4")
            page.get_by_label("Denoising steps").first.press("Enter")
            # Record every image the page shows from now on: the live panels are replaced once per step.
            before = set(page.locator("img").evaluate_all("els => els.map(e => e.src)"))
            page.evaluate("""() => {
                window.seenImages = new Set();
                const note = () => document.querySelectorAll('img').forEach(i => window.seenImages.add(i.src));
                new MutationObserver(note).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                                    attributeFilter: ['src']});
            }""")
            page.get_by_role("button", name="Generate").click()
            try:
                page.get_by_text("Scrub the steps below").wait_for(timeout=120000)
            finally:
                page.screenshot(path=str(shots / "2_after_run.png"), full_page=True, timeout=120000)
            seen = page.evaluate("Array.from(window.seenImages)")
            canvas = page.locator("canvas")
            canvas.first.wait_for(state="visible", timeout=30000)
            page.wait_for_timeout(3000)
            page.screenshot(path=str(shots / "2_generated.png"), full_page=False, timeout=120000)
            browser.close()
    finally:
        demo.close()
    streamed = {src.rsplit("/", 1)[-1] for src in set(seen) - before if src.endswith(".webp")}  # cached as .../NNN.webp
    assert {"000.webp", "001.webp", "002.webp", "003.webp"} <= streamed, f"a panel per step should stream in: {streamed}"
    assert not [e for e in errors if "favicon" not in e], errors

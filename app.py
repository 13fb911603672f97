"""gen3d: one photo -> 3D Gaussian splats by synchronized 2D and 3D diffusion (Gen-3Diffusion), live.

    python app.py [--preset auto|tiny|gen3diffusion|human3diffusion|FOLDER] [--device cpu|cuda]
                  [--port 7860] [--host 127.0.0.1] [--share] [--queue-size 16]

The page streams every denoising step (x_t, the 2D estimate x̃0, the 3D renders x̂0 and their
difference), records the trajectory for scrubbing, and shows and exports the final splat. Handlers
are thin: the work is in gen3d (sampler, demo, export, mesh). Nothing heavy is imported at start-up;
the default model is loaded in the background once the page is up.

Named API endpoints (gradio_client): /prepare, /generate, /show_step, /extract_mesh.
"""

from __future__ import annotations

import argparse
import os
import random
import threading
import time
from pathlib import Path

import gen3d  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch is imported)
import gradio as gr

from gen3d.demo import MainThreadRunner

try:  # ZeroGPU on Hugging Face Spaces; outside a Space the decorator does nothing
    import spaces
except ImportError:  # pragma: no cover - spaces is in requirements.txt
    spaces = None

REPO = Path(__file__).resolve().parent
EXAMPLES = REPO / "assets" / "examples"
OUTPUTS = Path(os.environ.get("GEN3D_OUTPUTS", REPO / "outputs" / "app"))
BORDER_DEFAULTS = {"object": 0.45, "person": 0.227}
MODE_CHOICES = {"3D-synchronized (the paper)": ("3d",), "2D-only (plain multi-view diffusion)": ("2d",),
                "Both, side by side (same seed)": ("3d", "2d")}
MAX_STEPS = 100
RUNNER = MainThreadRunner()  # serves sampler steps on the main thread under `python app.py`

EXPLAINER = r"""
### What you are watching
A diffusion model makes an image by starting from pure noise and removing a little of it at every
step. Here the 2D model makes **four views** of your object at once (front, right, back, left).

* **x_t** (top row): the current noisy views. At step 1 they are pure noise; t counts down from 981 to 1,
  and ᾱ_t, the share of signal in x_t, rises from about 0 to 1.
* **x̃0** (second row): the 2D model's one-step guess of the clean views from x_t. Early guesses are
  blurry averages; they sharpen as t falls. Nothing forces the four guesses to agree in 3D.
* **x̂0** (third row): the 3D part. A reconstructor turns x̃0 into 3D Gaussians (small coloured blobs)
  and renders them from the same four cameras. These renders are 3D-consistent by construction.
* **|x̃0 − x̂0|** (bottom row): where the 2D guess and the 3D renders disagree. The chart plots their
  PSNR per step: higher means the 2D and 3D models agree more.

### Algorithm 2 in plain words
At every step: guess the clean views (x̃0), lift the guess to 3D and render it (x̂0), then take the
usual DDIM step **as if the model had predicted x̂0**. The 3D renders steer the whole trajectory, so it
stays consistent in 3D; after the last step the Gaussians of a final pass are the result.
In **2D-only** mode x̃0 drives the update instead (plain multi-view diffusion); the reconstructor still
runs so you can compare. The *3D guidance window* turns the 3D steering on for part of the steps only.
"""


# ------------------------------------------------------------------------------------------ helpers
def _manager():
    return APP["manager"]


def _folders():
    return APP["folders"]


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


def _preprocess(path, kind: str, remove_background: bool, border_ratio: float, size: int = 256):
    from gen3d.cli import keep_everything
    from gen3d.preprocess import InvalidImageError, preprocess

    if not path:
        raise gr.Error("Please upload an image (PNG, JPEG, WebP, ...) or pick an example first.")
    if not 0.0 <= float(border_ratio) < 1.0:
        raise gr.Error(f"The border ratio must be in [0, 1), got {border_ratio}.")
    try:
        return preprocess(path, border_ratio=float(border_ratio), size=size,
                          remover="auto" if remove_background else keep_everything)
    except InvalidImageError as err:
        raise gr.Error(f"This file cannot be used: {err}") from err


def _report(result) -> str:
    report = "\n".join(f"- {step}" for step in result.steps)
    if result.fallback_reason:
        report += f"\n\n**Note:** {result.fallback_reason}"
    return report


def _load(preset: str, kind: str):
    from gen3d.weights import WeightsError

    try:
        return _manager().get(preset, kind)
    except WeightsError as err:
        raise gr.Error(str(err)) from err


def _chart(trajectories: dict, num_steps: int):
    from gen3d.demo import consistency_figure

    return consistency_figure({mode: t.steps for mode, t in trajectories.items()}, num_steps)


def _step_status(infos: dict) -> str:
    from gen3d.demo import MODES

    return "\n\n".join(f"**{MODES[mode].split(' (')[0]}:** {info.describe()}" for mode, info in infos.items())


def _final_outputs(run: Path):
    """Viewer, turntable, centres plot, downloads, slider and state for a finished run folder."""
    from gen3d.demo import gaussian_centres_figure, load_run
    from gen3d.gaussians import load_ply

    trajectories = load_run(run)
    main = trajectories.get("3d") or next(iter(trajectories.values()))
    files = [str(p) for t in trajectories.values() for p in t.files()]
    n = len(main.steps)
    state = {"run": str(run), "modes": list(trajectories), "steps": n}
    centres = gaussian_centres_figure(load_ply(main.folder / "gs.ply"))
    return (str(main.folder / "viewer.ply"), str(main.folder / "turntable.mp4"), centres, files,
            gr.update(minimum=1, maximum=max(n, 2), value=n, step=1, interactive=n > 1), state)  # gradio: min < max


def _checked_run(state) -> Path:
    run = Path((state or {}).get("run", ""))
    if not state or not (run.is_dir() and (_folders().contains(run) or EXAMPLES in run.resolve().parents)):
        raise gr.Error("Nothing to show yet: generate something or pick an example first.")
    return run


# ----------------------------------------------------------------------------------------- handlers
def prepare_input(path, kind: str, remove_background: bool, border_ratio: float):
    """Upload -> (the preprocessed model input, a report of what was done)."""
    from gen3d.export import to_uint8

    result = _preprocess(path, kind, remove_background, border_ratio)
    return to_uint8(result.image[0]), _report(result)


def _gpu_duration(path, kind, remove_background, border_ratio, preset, steps, cfg, seed, mode, w_start, w_end, *args, **kwargs):
    return int(30 + float(steps) * 1.2 * len(MODE_CHOICES.get(mode, ("3d",))))


def _gpu(fn):
    return spaces.GPU(duration=_gpu_duration)(fn) if spaces is not None else fn


@_gpu
def generate(path, kind, remove_background, border_ratio, preset, steps, cfg, seed, mode, w_start, w_end,
             request: gr.Request = None, progress=gr.Progress()):
    """Stream a run: one update per denoising step, then the results (viewer, videos, downloads)."""
    from gen3d.demo import NonFiniteError, TrajectoryWriter, Trajectory, run_modes
    from gen3d.export import save_image, to_uint8

    modes = MODE_CHOICES.get(mode)
    if modes is None:
        raise gr.Error(f"Unknown guidance mode {mode!r}; choose one of: {', '.join(MODE_CHOICES)}.")
    steps = int(steps)
    if not 1 <= steps <= MAX_STEPS:
        raise gr.Error(f"Steps must be between 1 and {MAX_STEPS}, got {steps}.")
    if not 0 <= float(w_start) <= float(w_end) <= 100:
        raise gr.Error(f"The 3D guidance window must satisfy 0 ≤ start ≤ end ≤ 100 (%), got {w_start}–{w_end}.")
    if not 0 <= float(cfg) <= 30:
        raise gr.Error(f"The CFG scale must be between 0 and 30, got {cfg}.")
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise gr.Error(f"The seed must be a whole number, got {seed!r}.") from None
    progress(0, desc="loading the model")
    pipe = _load(preset, kind)
    pre = _preprocess(path, kind, remove_background, border_ratio, size=pipe.config.image_size)
    try:
        run = _folders().new_run(_session(request))
    except OSError as err:  # the outputs root is missing, read-only or full
        raise gr.Error(f"Could not create a folder for the results ({err.strerror or err}); "
                       "the server's output folder is unusable. Please try again later.") from err
    finished = False
    try:
        save_image(pre.image[0], run / "input.png")
        preview = to_uint8(pre.image[0])  # exactly what the model sees, at its resolution
        writers = {m: TrajectoryWriter(run / m, m) for m in modes}
        yield (None if "3d" not in modes else gr.skip(), None if "2d" not in modes else gr.skip(),  # no stale panels
               f"Starting: {steps} steps, {', '.join(modes)} guidance, seed {seed}…",
               # the splat viewer keeps the last result until this one is ready: clearing it makes gradio mount a
               # new viewer without disposing the old one, whose render loop keeps running (slow on software WebGL)
               gr.skip(), gr.skip(), None, None, None, gr.update(interactive=False), None, preview, _report(pre))
        for step in RUNNER.iterate(run_modes(pipe, pre.image, modes, steps, float(cfg), seed,
                                             window=(float(w_start) / 100, float(w_end) / 100),
                                             autocast=_manager().autocast)):
            panels = {m: str(writers[m].add(record)) for m, record in step.items()}
            index = next(iter(step.values())).index
            progress((index + 1) / steps, desc=f"step {index + 1}/{steps}")
            status = _step_status({m: w.steps[-1] for m, w in writers.items()})
            chart = _chart({m: Trajectory(w.folder, m, w.steps, {}) for m, w in writers.items()}, steps)
            yield (panels.get("3d", gr.skip()), panels.get("2d", gr.skip()), status, chart,
                   gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip())
        progress(1.0, desc="writing the splat, videos and downloads")
        info = {"kind": kind, "seed": seed, "steps": steps, "guidance_scale": float(cfg), "model": pipe.describe(),
                "guidance_window": [float(w_start) / 100, float(w_end) / 100], "preprocessing": pre.steps,
                "autocast": _manager().autocast}
        for writer in writers.values():
            RUNNER.call(writer.finish, pipe.config.render_mode, extra=info)
        finished = True
        viewer, turntable, centres, files, slider, state = _final_outputs(run)
        total = sum(s.seconds for w in writers.values() for s in w.steps)
        yield (gr.skip(), gr.skip(), status + f"\n\n**Done** in {total:.1f} s of sampling. Scrub the steps below.",
               gr.skip(), viewer, turntable, centres, files, slider, state, gr.skip(), gr.skip())
    except NonFiniteError as err:
        raise gr.Error(str(err)) from err
    except OSError as err:  # a full or read-only output folder
        raise gr.Error(f"Could not write the results ({err.strerror or err}); nothing was lost on your side.") from err
    finally:
        if not finished:  # stopped, disconnected or failed: drop the partial run
            _folders().remove(run)


def show_step(state, step):
    """The recorded panels and status of one step of the last run (1-based)."""
    from gen3d.demo import load_run

    run = _checked_run(state)
    trajectories = load_run(run)
    index = int(step) - 1
    panels = {m: str(t.panel(index)) for m, t in trajectories.items()}
    infos = {m: t.steps[min(max(index, 0), len(t.steps) - 1)] for m, t in trajectories.items()}
    return panels.get("3d"), panels.get("2d"), _step_status(infos)


def play(state, step):
    """Replay the recorded trajectory from the current step (from the start if at the end)."""
    state_run = _checked_run(state)
    n = int(state["steps"])
    start = 1 if int(step) >= n else int(step)
    for i in range(start, n + 1):
        a, b, status = show_step({"run": str(state_run)}, i)
        yield a, b, status, i
        time.sleep(0.12)


def load_example(name: str):
    """An example's preprocessed input and its precomputed trajectory, instantly."""
    from gen3d.demo import load_run

    run = EXAMPLES / name
    if not (run / "3d" / "trajectory.json").is_file():
        raise gr.Error(f"Example {name!r} is missing its precomputed trajectory.")
    trajectories = load_run(run)
    n = len(trajectories["3d"].steps)
    viewer, turntable, centres, files, slider, state = _final_outputs(run)
    a, b, status = show_step(state, n)
    kind = trajectories["3d"].extra.get("kind", "object")
    return (a, b, status + "\n\n*Precomputed example (tiny model). Press Generate to run it live.*",
            _chart(trajectories, n), viewer, turntable, centres, files, slider, state, str(run / "input.png"),
            f"Example '{name}': precomputed with {trajectories['3d'].extra.get('model', 'the tiny model')}.",
            str(run / "source.png") if (run / "source.png").is_file() else str(run / "input.png"), kind)


def extract_mesh(state, quality: str, request: gr.Request = None):
    """TSDF mesh of the shown run's splat -> (mesh viewer, downloads). Examples are meshed in a session folder."""
    import shutil

    from gen3d.gaussians import load_ply

    run = _checked_run(state)
    try:
        from gen3d.mesh import export_mesh, extract_mesh as tsdf_mesh
    except ImportError as err:
        raise gr.Error(f"Mesh extraction is not available: {err}") from err
    if quality not in ("low", "high"):
        raise gr.Error(f"Mesh quality must be 'low' or 'high', got {quality!r}.")
    folder = run / ("3d" if (run / "3d").is_dir() else state["modes"][0])
    if not _folders().contains(folder):  # a shipped example: never write into assets/
        copy = _folders().new_run(_session(request)) / folder.name
        shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("steps"))
        folder = copy
    glb = folder / f"mesh_{quality}.glb"
    try:
        if not glb.is_file():
            mesh = tsdf_mesh(load_ply(folder / "gs.ply"), quality=quality)
            export_mesh(mesh, glb)
            export_mesh(mesh, folder / f"mesh_{quality}.obj")
    except ValueError as err:  # e.g. no surface: nothing in the splat reaches alpha 0.5
        raise gr.Error(f"No mesh could be extracted: {err}") from err
    except OSError as err:
        raise gr.Error(f"Could not write the mesh ({err.strerror or err}).") from err
    keep = (".ply", ".splat", ".mp4", ".json", ".glb", ".obj")
    files = [str(p) for p in sorted(folder.iterdir()) if p.suffix in keep and p.name != "viewer.ply"]
    return str(glb), files


def random_seed() -> int:
    return random.SystemRandom().randrange(0, 2**31 - 1)


def cleanup_session(request: gr.Request):
    _folders().remove_session(_session(request))


# -------------------------------------------------------------------------------------------- page
def build_demo() -> gr.Blocks:
    from gen3d.demo import PANEL_ROWS, examples_index

    examples = examples_index(EXAMPLES)
    with gr.Blocks(title="gen3d: image to 3D with synchronized 2D and 3D diffusion", delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# gen3d · one photo → 3D Gaussians, watching 2D and 3D diffusion work together\n"
                    "An open implementation of **Gen-3Diffusion** (Xue, Xie, Marin, Pons-Moll, 2024). "
                    "Pick an example or upload a photo, then press **Generate** and watch every denoising step.")
        model_status = gr.Markdown(_manager().status())
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Photo of one object or person (PNG, JPEG, WebP; ≤ 20 MB)", type="filepath")
                kind = gr.Radio(["object", "person"], value="object", label="What is in the photo?")
                remove_bg = gr.Checkbox(value=True, label="Remove the background (when the image has no alpha)")
                border = gr.Slider(0.0, 0.8, value=BORDER_DEFAULTS["object"], step=0.005,
                                   label="Border ratio (empty margin around the subject)")
                prepare_button = gr.Button("Preview the model input")
            with gr.Column(scale=1):
                prepared = gr.Image(label="Model input (background removed, recentred)", interactive=False, height=256)
                report = gr.Markdown()
        with gr.Accordion("Sampling settings", open=True):
            with gr.Row():
                choices = ["auto", "tiny", "gen3diffusion", "human3diffusion"]
                choices += [APP["preset"]] if APP["preset"] not in choices else []  # --preset FOLDER
                preset = gr.Dropdown(choices, value=APP["preset"],
                                     label="Model", info="auto: tiny on CPU; the released models on a GPU")
                mode = gr.Radio(list(MODE_CHOICES), value=list(MODE_CHOICES)[0], label="Guidance")
            with gr.Row():
                steps = gr.Slider(1, MAX_STEPS, value=50, step=1, label="Denoising steps")
                cfg = gr.Slider(0.0, 15.0, value=5.0, step=0.5, label="CFG scale")
                seed = gr.Number(value=0, precision=0, label="Seed")
                dice = gr.Button("🎲 Random seed", scale=0)
            with gr.Row():
                w_start = gr.Slider(0, 100, value=0, step=1, label="3D guidance from (% of steps)")
                w_end = gr.Slider(0, 100, value=100, step=1, label="3D guidance until (% of steps)")
        with gr.Row():
            generate_button = gr.Button("Generate", variant="primary")
            stop_button = gr.Button("Stop")
        gr.Markdown("Rows of each panel: " + " · ".join(f"**{i + 1}.** {r}" for i, r in enumerate(PANEL_ROWS))
                    + ". Columns: the four target views (front, right, back, left).")
        with gr.Row():
            live_3d = gr.Image(label="3D-synchronized", interactive=False, height=420)
            live_2d = gr.Image(label="2D-only", interactive=False, height=420)
        step_status = gr.Markdown()
        chart = gr.Plot(label="2D–3D consistency per step")
        with gr.Row():
            scrub = gr.Slider(1, 50, value=1, step=1, label="Step (scrub the recorded trajectory)", interactive=False)
            play_button = gr.Button("▶ Play", scale=0)
        with gr.Tabs():
            with gr.Tab("3D viewer"):
                viewer = gr.Model3D(label="Final Gaussian splat (drag to orbit)", height=420)
                with gr.Row():
                    quality = gr.Dropdown(["low", "high"], value="low", label="Mesh quality", scale=0)
                    mesh_button = gr.Button("Extract mesh (TSDF)")
                mesh_viewer = gr.Model3D(label="Mesh (.glb)", height=360)
            with gr.Tab("Turntable"):
                turntable = gr.Video(label="Turntable of the final splat", autoplay=True, loop=True)
            with gr.Tab("Gaussian centres"):
                centres = gr.Plot(label="Gaussian centres")
            with gr.Tab("Downloads"):
                downloads = gr.File(label="gs.ply (official layout) · gs.splat (web viewers) · videos · metrics",
                                    file_count="multiple", interactive=False)
        with gr.Accordion("How it works (for teaching)", open=False):
            gr.Markdown(EXPLAINER)
        if examples:
            gr.Markdown("### Examples (precomputed: they open instantly)")
            example_name = gr.Radio([e["name"] for e in examples], label="Example", value=None)

        kind.change(lambda k: BORDER_DEFAULTS[k], kind, border, api_visibility="private")
        prepare_button.click(prepare_input, [upload, kind, remove_bg, border], [prepared, report], api_name="prepare",
                             concurrency_id="light", concurrency_limit=4)
        dice.click(random_seed, None, seed, api_visibility="private")
        outputs = [live_3d, live_2d, step_status, chart, viewer, turntable, centres, downloads, scrub, state, prepared, report]
        run_event = generate_button.click(
            generate, [upload, kind, remove_bg, border, preset, steps, cfg, seed, mode, w_start, w_end], outputs,
            api_name="generate", concurrency_id="gpu", concurrency_limit=1)
        run_event.then(lambda: _manager().status(), None, model_status, api_visibility="private")
        stop_button.click(None, None, None, cancels=[run_event], api_visibility="private")
        scrub.release(show_step, [state, scrub], [live_3d, live_2d, step_status], api_name="show_step",
                      concurrency_id="light", concurrency_limit=4)
        play_button.click(play, [state, scrub], [live_3d, live_2d, step_status, scrub], api_visibility="private",
                          concurrency_id="light", concurrency_limit=4)
        mesh_button.click(extract_mesh, [state, quality], [mesh_viewer, downloads], api_name="extract_mesh",
                          concurrency_id="gpu", concurrency_limit=1)
        if examples:
            example_name.change(
                load_example, example_name,
                [live_3d, live_2d, step_status, chart, viewer, turntable, centres, downloads, scrub, state, prepared,
                 report, upload, kind], api_name="load_example", concurrency_id="light", concurrency_limit=4)
        demo.load(lambda: _manager().status(), None, model_status, api_visibility="private")
        if examples:  # a first visit shows a finished example right away
            demo.load(lambda: examples[0]["name"], None, example_name, api_visibility="private")
        demo.unload(cleanup_session)
    return demo


APP: dict = {}


def configure(preset: str = "auto", device: str | None = None, dtype: str | None = None, checkpoint_dir=None,
              base_dir=None, outputs: Path = OUTPUTS, manager=None, autocast: str = "auto") -> None:
    """Set up the shared model manager and output folders (app start-up and tests)."""
    from gen3d.demo import ModelManager, RunFolders

    APP["manager"] = manager or ModelManager(device=device, dtype=dtype, checkpoint_dir=checkpoint_dir, base_dir=base_dir,
                                             autocast=autocast)
    APP["folders"] = RunFolders(outputs)
    APP["folders"].clean_old()
    APP["preset"] = preset


def preload(preset: str) -> None:
    """Load the default model (and the background remover) in the background, so the first click is quick."""
    def work():
        from gen3d.weights import WeightsError

        try:
            _manager().get(preset)
        except WeightsError as err:
            print(f"gen3d: {err}")
        try:
            from gen3d.preprocess import background_remover

            background_remover()
        except Exception as err:  # noqa: BLE001 - reported, the app works without it (heuristic fallback)
            print(f"gen3d: background remover not preloaded: {err}")

    threading.Thread(target=work, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="auto", help="auto, tiny, gen3diffusion, human3diffusion or a folder")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: best available)")
    parser.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--autocast", default="auto", choices=("auto", "off", "bfloat16", "float16"),
                        help="dtype of the network passes: auto = bfloat16 where the device computes it natively")
    parser.add_argument("--checkpoint-dir", default=None, help="folder with the released model*.safetensors")
    parser.add_argument("--base-dir", default=None, help="local copy of the ImageDream base model")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--queue-size", type=int, default=16, help="requests waiting beyond this are told the app is busy")
    parser.add_argument("--share", action="store_true")
    args = parser.parse_args()
    configure(args.preset, args.device, args.dtype, args.checkpoint_dir, args.base_dir, autocast=args.autocast)
    demo = build_demo()
    preload(args.preset)
    demo.queue(default_concurrency_limit=1, max_size=args.queue_size).launch(
        server_name=args.host, server_port=args.port, share=args.share, max_file_size="20mb", show_error=True,
        allowed_paths=[str(EXAMPLES), str(OUTPUTS)], prevent_thread_lock=True)
    try:  # the main thread runs the sampler steps (see MainThreadRunner) until Ctrl-C
        RUNNER.serve(until=threading.Event())
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()


if __name__ == "__main__":
    main()

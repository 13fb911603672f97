"""What the app shows, as plain data: step panels, recorded trajectories, charts and run folders.

Nothing here imports gradio, so the app's logic is testable without a server. A run folder holds
one mode's trajectory and results:

    RUN/input.png                      the preprocessed input the model saw
    RUN/<mode>/steps/NNN.webp          one panel per step: rows x_t, x0_tilde, x0_hat, |x0_tilde - x0_hat|
    RUN/<mode>/trajectory.json         per-step t, alpha_bar, guided, PSNR(x0_tilde, x0_hat), seconds
    RUN/<mode>/gs.ply                  final Gaussians, official layout and orientation (spec 11.1)
    RUN/<mode>/gs.splat                the same, turned for web splat viewers (their up is -y)
    RUN/<mode>/viewer.ply              what gr.Model3D is given (turned like gs.splat)
    RUN/<mode>/turntable.mp4, trajectory.mp4, metrics.json

with <mode> "3d" (synchronized sampling) or "2d" (plain multi-view diffusion). The shipped examples
in assets/examples are run folders written by ``python -m gen3d.demo examples``.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

PANEL_ROWS = ("x_t (noisy views, decoded)", "x̃0 (2D estimate)", "x̂0 (3D renders)", "|x̃0 − x̂0| × 4")
MODES = {"3d": "3D-synchronized (the paper)", "2d": "2D-only (plain multi-view diffusion)"}
DIFF_GAIN = 4.0
PANEL_FORMAT = "webp"


# --------------------------------------------------------------------------------------------- panels
def step_panel(xt_images, x0_tilde_images, x0_hat_images, pad: int = 2) -> np.ndarray:
    """The four rows of one step ([V, 3, H, W] tensors in [0, 1]) as one uint8 image [H', W', 3]."""
    import torch

    from gen3d.export import image_grid, to_uint8

    diff = ((x0_tilde_images - x0_hat_images).abs() * DIFF_GAIN).clamp(0, 1)
    rows = torch.cat([xt_images, x0_tilde_images, x0_hat_images, diff]).float()
    return to_uint8(image_grid(rows, columns=xt_images.shape[0], pad=pad))


def save_panel(panel: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(panel).save(path, quality=92, method=4) if path.suffix == ".webp" else Image.fromarray(panel).save(path)
    return path


# ----------------------------------------------------------------------------------------- trajectory
@dataclass
class StepInfo:
    """The cheap per-step measures of one sampler record (what the chart and the status show)."""

    index: int
    num_steps: int
    t: int
    alpha_bar: float
    guided: bool
    psnr: list[float]  # per view, PSNR(x0_tilde, x0_hat) in dB
    seconds: float
    gaussians: dict[str, float] = field(default_factory=dict)

    @property
    def mean_psnr(self) -> float:
        return float(np.mean(self.psnr)) if self.psnr else float("nan")

    @classmethod
    def from_record(cls, record) -> "StepInfo":
        return cls(index=record.index, num_steps=record.num_steps, t=record.t, alpha_bar=float(record.alpha_bar),
                   guided=bool(record.guided), psnr=[round(float(v), 3) for v in record.psnr],
                   seconds=round(float(record.seconds), 4), gaussians=dict(record.gaussian_stats))

    def describe(self) -> str:
        kind = "3D-guided" if self.guided else "2D update"
        return (f"step {self.index + 1}/{self.num_steps} · t = {self.t} · ᾱ_t = {self.alpha_bar:.4f} · {kind} · "
                f"PSNR(x̃0, x̂0) = {self.mean_psnr:.2f} dB")


class NonFiniteError(RuntimeError):
    """A sampler record held NaN or infinite values."""


def check_finite(record) -> None:
    import torch

    for name in ("xt_images", "x0_tilde_images", "x0_hat_images"):
        if not torch.isfinite(getattr(record, name)).all():
            raise NonFiniteError(f"the run produced NaN/inf values in {name} at step {record.index + 1}; it was stopped")
    if not torch.isfinite(record.gaussians.means).all():
        raise NonFiniteError(f"the run produced NaN/inf Gaussian positions at step {record.index + 1}; it was stopped")


class TrajectoryWriter:
    """Writes one mode's trajectory as it streams, then its results."""

    def __init__(self, folder: Path, mode: str):
        self.folder, self.mode = Path(folder), mode
        self.steps: list[StepInfo] = []
        self.final = None

    def panel_path(self, index: int) -> Path:
        return self.folder / "steps" / f"{index:03d}.{PANEL_FORMAT}"

    def add(self, record) -> Path:
        check_finite(record)
        self.steps.append(StepInfo.from_record(record))
        if record.final_gaussians is not None:
            self.final = record.final_gaussians
        return save_panel(step_panel(record.xt_images, record.x0_tilde_images, record.x0_hat_images),
                          self.panel_path(record.index))

    def write_json(self, extra: Optional[dict] = None) -> Path:
        data = (extra or {}) | {"mode": self.mode, "records": [asdict(s) for s in self.steps]}
        path = self.folder / "trajectory.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1))
        return path

    def finish(self, render_mode: str = "gof", turntable_frames: int = 36, size: int = 128, extra: Optional[dict] = None) -> dict:
        """Write gs.ply, gs.splat, viewer.ply, turntable.mp4, trajectory.mp4, trajectory.json, metrics.json."""
        from PIL import Image

        from gen3d.export import render_views, to_uint8, turntable_cameras, write_metrics, write_video
        from gen3d.gaussians import rotate_x_180, save_ply, save_splat

        if self.final is None:
            raise RuntimeError("the trajectory has no final Gaussians (the run did not reach its last step)")
        save_ply(self.final, self.folder / "gs.ply")
        turned = rotate_x_180(self.final)
        save_ply(turned, self.folder / "viewer.ply")
        save_splat(turned, self.folder / "gs.splat")
        frames = render_views(self.final, turntable_cameras(turntable_frames, size), render_mode)
        write_video(to_uint8(frames), self.folder / "turntable.mp4", fps=18)
        write_video((np.asarray(Image.open(self.panel_path(s.index)).convert("RGB")) for s in self.steps),
                    self.folder / "trajectory.mp4", fps=8)
        self.write_json(extra)
        metrics = {"mode": self.mode, "steps": len(self.steps), "final_gaussians": self.final.stats(),
                   "final_psnr_2d_vs_3d": self.steps[-1].mean_psnr if self.steps else None,
                   "seconds": round(sum(s.seconds for s in self.steps), 3)} | (extra or {})
        write_metrics(metrics, self.folder / "metrics.json")
        return metrics


@dataclass
class Trajectory:
    """A recorded trajectory read back from a run folder (for scrubbing, replay and examples)."""

    folder: Path
    mode: str
    steps: list[StepInfo]
    extra: dict

    @classmethod
    def load(cls, folder: Path) -> "Trajectory":
        folder = Path(folder)
        data = json.loads((folder / "trajectory.json").read_text())
        steps = [StepInfo(**s) for s in data.pop("records")]
        return cls(folder=folder, mode=data.pop("mode"), steps=steps, extra=data)

    def panel(self, index: int) -> Path:
        index = min(max(int(index), 0), len(self.steps) - 1)
        return self.folder / "steps" / f"{index:03d}.{PANEL_FORMAT}"

    def files(self) -> list[Path]:
        """The downloads that exist: .ply, .splat, videos, metrics, mesh."""
        names = ("gs.ply", "gs.splat", "trajectory.mp4", "turntable.mp4", "metrics.json")
        meshes = sorted(p for p in self.folder.glob("mesh*") if p.suffix in (".glb", ".obj"))
        return [self.folder / n for n in names if (self.folder / n).is_file()] + meshes


def load_run(run: Path) -> dict[str, Trajectory]:
    """The trajectories of a run folder, keyed by mode ("3d" first)."""
    return {mode: Trajectory.load(Path(run) / mode) for mode in MODES if (Path(run) / mode / "trajectory.json").is_file()}


# -------------------------------------------------------------------------------------------- charts
def consistency_figure(runs: dict[str, Sequence[StepInfo]], num_steps: Optional[int] = None):
    """Plotly chart: mean PSNR(x̃0, x̂0) per step for each mode; filled markers on 3D-guided steps."""
    import plotly.graph_objects as go

    colours = {"3d": "#d62728", "2d": "#1f77b4"}
    fig = go.Figure()
    for mode, steps in runs.items():
        if not steps:
            continue
        fig.add_trace(go.Scatter(
            x=[s.index + 1 for s in steps], y=[round(s.mean_psnr, 2) for s in steps], mode="lines+markers",
            name=MODES[mode].split(" (")[0], line=dict(color=colours.get(mode)),
            marker=dict(symbol=["circle" if s.guided else "circle-open" for s in steps], size=6),
            customdata=[[s.t, s.alpha_bar] for s in steps],
            hovertemplate="step %{x}<br>t = %{customdata[0]}<br>ᾱ_t = %{customdata[1]:.4f}<br>%{y:.2f} dB<extra></extra>"))
    fig.update_layout(
        title="2D–3D consistency: PSNR between x̃0 and the 3D renders x̂0 (higher = more consistent)",
        xaxis_title="denoising step", yaxis_title="PSNR (dB)", height=320, margin=dict(l=50, r=10, t=50, b=40),
        legend=dict(orientation="h", y=-0.25), template="plotly_white")
    if num_steps:
        fig.update_xaxes(range=[0.5, num_steps + 0.5])
    return fig


def gaussian_centres_figure(gaussians, max_points: int = 20000, generator=None):
    """Plotly 3D scatter of the Gaussian centres, coloured by their colour, sized by opacity; +y up."""
    import plotly.graph_objects as go
    import torch

    g = gaussians.detach().to("cpu")
    keep = g.opacities > 0.05
    means, colours, opacity = g.means[keep], g.colors[keep].clamp(0, 1), g.opacities[keep]
    if means.shape[0] > max_points:
        index = torch.randperm(means.shape[0], generator=generator)[:max_points]
        means, colours, opacity = means[index], colours[index], opacity[index]
    rgb = [f"rgb({int(r * 255)},{int(gc * 255)},{int(b * 255)})" for r, gc, b in colours.tolist()]
    fig = go.Figure(go.Scatter3d(
        x=means[:, 0].tolist(), y=means[:, 2].tolist(), z=means[:, 1].tolist(),  # plotly's up is z: show +y up
        mode="markers", marker=dict(size=(1.5 + 3 * opacity).tolist(), color=rgb, opacity=0.9),
        hoverinfo="skip"))
    fig.update_layout(
        title=f"Gaussian centres ({means.shape[0]:,} with opacity > 0.05)", height=420,
        margin=dict(l=0, r=0, t=40, b=0),
        scene=dict(xaxis_title="x", yaxis_title="z", zaxis_title="y (up)", aspectmode="data",
                   camera=dict(eye=dict(x=0.0, y=1.8, z=0.6))))
    return fig


# -------------------------------------------------------------------------------------- run folders
class RunFolders:
    """Per-session output folders under one root; a path from outside is only used if it is inside it."""

    def __init__(self, root: Path, max_age_s: float = 6 * 3600):
        self.root = Path(root).resolve()
        self.max_age_s = max_age_s
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError:  # read-only or blocked: the app still starts; new_run raises and the run says why
            pass

    def new_run(self, session: str) -> Path:
        safe = "".join(c for c in session if c.isalnum())[:40] or "anonymous"
        run = self.root / safe / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
        run.mkdir(parents=True)
        return run

    def contains(self, path: Path | str) -> bool:
        try:
            Path(path).resolve().relative_to(self.root)
            return True
        except (ValueError, OSError):
            return False

    def remove_session(self, session: str) -> None:
        safe = "".join(c for c in session if c.isalnum())[:40]
        if safe:
            shutil.rmtree(self.root / safe, ignore_errors=True)

    def remove(self, run: Path) -> None:
        if self.contains(run) and Path(run).resolve() != self.root:
            shutil.rmtree(run, ignore_errors=True)

    def clean_old(self, now: Optional[float] = None) -> int:
        """Remove session folders untouched for longer than max_age_s; returns how many."""
        now = time.time() if now is None else now
        removed = 0
        if not self.root.is_dir():
            return 0
        for folder in self.root.iterdir():
            try:
                if folder.is_dir() and now - folder.stat().st_mtime > self.max_age_s:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
            except OSError:
                continue
        return removed


# ----------------------------------------------------------------------------------------- the runs
class MainThreadRunner:
    """Runs the heavy torch work of the app's handlers on the process's main thread.

    Measured on the 2-core CPU: the tiny sampler runs about 1.6x slower on any other thread than on the
    main one (20 steps: 14-16 s vs 9.5 s; OpenMP with passive waiting), and gradio calls handlers and
    resumes streams from its worker threads. ``python app.py`` therefore launches gradio without blocking
    and hands its main thread to :meth:`serve`; handlers send their sampler steps through :meth:`call` /
    :meth:`iterate`. Where nothing serves (tests that launch the app themselves, a forked ZeroGPU worker),
    calls run in place on the caller's thread, exactly as before.
    """

    def __init__(self):
        self._tasks: queue.Queue = queue.Queue()
        self._pid: Optional[int] = None  # the process whose main thread serves, while it does
        self._thread: Optional[threading.Thread] = None

    @property
    def serving(self) -> bool:
        return self._pid == os.getpid() and self._thread is not None and self._thread.is_alive()

    def call(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) on the serving thread (in place when none serves, or from that thread itself)."""
        if not self.serving or threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        future: Future = Future()
        self._tasks.put((future, fn, args, kwargs))
        while True:
            try:
                return future.result(timeout=1.0)
            except FutureTimeout:
                if not self.serving and future.cancel():  # the server stopped before taking it
                    raise RuntimeError("the app is shutting down") from None

    def iterate(self, iterator):
        """Yield the items of ``iterator``, each produced on the serving thread; closing this closes it."""
        end = object()
        try:
            while (item := self.call(next, iterator, end)) is not end:
                yield item
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                self.call(close)

    def serve(self, until: threading.Event) -> None:
        """Run submitted calls on this thread until ``until`` is set (checked every 0.2 s)."""
        self._pid, self._thread = os.getpid(), threading.current_thread()
        try:
            while not until.is_set():
                try:
                    future, fn, args, kwargs = self._tasks.get(timeout=0.2)
                except queue.Empty:
                    continue
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args, **kwargs))
                    except BaseException as err:  # noqa: BLE001 - handed to the caller, which re-raises it
                        future.set_exception(err)
        finally:
            self._pid = self._thread = None
            while not self._tasks.empty():  # nobody will run these now: their callers get an error, not a hang
                future = self._tasks.get_nowait()[0]
                if future.set_running_or_notify_cancel():
                    future.set_exception(RuntimeError("the app is shutting down"))


def run_modes(pipe, image, modes: Iterable[str], steps: int, guidance_scale: float, seed: int,
              window: tuple[float, float] = (0.0, 1.0), prompt: Optional[str] = None, negative_prompt: Optional[str] = None,
              autocast: Optional[str] = None):
    """Run one sampler per mode with the same seed, interleaved step by step: yields {mode: record}."""
    import torch

    from gen3d.sampler import SamplerConfig, sample

    streams = {}
    for mode in modes:
        config = SamplerConfig(num_inference_steps=steps, guidance_scale=guidance_scale, guidance=mode,
                               guidance_window=window, prompt=prompt, negative_prompt=negative_prompt, autocast=autocast)
        streams[mode] = sample(pipe, image, config, torch.Generator().manual_seed(int(seed)))
    try:
        while True:
            step = {}
            for mode, stream in streams.items():
                record = next(stream, None)
                if record is not None:
                    step[mode] = record
            if not step:
                return
            yield step
    finally:
        for stream in streams.values():
            stream.close()


def write_examples(pipe, sources: Sequence[tuple[str, Path, str]], out: Path, steps: int = 50, seed: int = 0,
                   guidance_scale: Optional[float] = None, autocast: Optional[str] = None) -> list[Path]:
    """Precompute example run folders (both modes) for the app: (name, image path, kind) -> out/name."""
    from gen3d.export import save_image
    from gen3d.preprocess import preprocess

    written = []
    for name, path, kind in sources:
        run = Path(out) / name
        shutil.rmtree(run, ignore_errors=True)
        border = pipe.config.border_ratio if kind == "object" else 0.227
        pre = preprocess(path, border_ratio=border, size=pipe.config.image_size)
        save_image(pre.image[0], run / "input.png")
        writers = {mode: TrajectoryWriter(run / mode, mode) for mode in MODES}
        cfg = pipe.config.guidance_scale if guidance_scale is None else guidance_scale
        for step in run_modes(pipe, pre.image, MODES, steps, cfg, seed, autocast=autocast):
            for mode, record in step.items():
                writers[mode].add(record)
        info = {"name": name, "kind": kind, "seed": seed, "steps": steps, "guidance_scale": cfg,
                "model": pipe.describe(), "source": Path(path).name, "autocast": autocast}
        for writer in writers.values():
            writer.finish(pipe.config.render_mode, extra=info)
        written.append(run)
    return written


def examples_index(folder: Path) -> list[dict]:
    """The shipped examples: [{"name", "kind", "input", "run"}] for every complete run folder."""
    found = []
    for run in sorted(Path(folder).glob("*/")):
        traj = run / "3d" / "trajectory.json"
        if traj.is_file() and (run / "input.png").is_file():
            kind = json.loads(traj.read_text()).get("kind", "object")
            found.append({"name": run.name, "kind": kind, "input": run / "input.png", "run": run})
    return found


# ------------------------------------------------------------------------------------------- models
RELEASED_ON_CPU = ("the released models need a CUDA GPU: one 50-step run is about 10 TFLOPs per step, roughly an "
                   "hour on a laptop CPU. Use the tiny model here, or run on a GPU.")


class ModelManager:
    """One loaded pipeline at a time, shared by all sessions; loads on first use, thread-safe.

    ``preset="auto"`` picks the tiny checkpoint without a GPU and the released model for the kind of
    subject (gen3diffusion for objects, human3diffusion for people) with one; the status says why.
    A failed load leaves the previous model in place and raises ``WeightsError`` with the reason.
    """

    def __init__(self, device: Optional[str] = None, dtype: Optional[str] = None, checkpoint_dir: Optional[str] = None,
                 base_dir: Optional[str] = None, allow_released_on_cpu: bool = False, loader=None,
                 autocast: str = "auto"):
        import threading

        from gen3d.cli import default_device
        from gen3d.sampler import resolve_autocast

        self.device = device or default_device()
        self.dtype = dtype or ("float32" if self.device == "cpu" else "float16")
        # the network passes' autocast dtype (None: the pipeline's own dtype), and why
        self.autocast, autocast_note = resolve_autocast(autocast, self.device, self.dtype)
        self.checkpoint_dir, self.base_dir = checkpoint_dir, base_dir
        self.allow_released_on_cpu = allow_released_on_cpu
        self.loader = loader  # tests: preset -> pipeline
        self.pipe, self.preset, self.error = None, None, None
        self.lock = threading.Lock()
        self.notes: list[str] = []
        if self.device == "cpu":
            self.notes.append("No GPU found: running on the CPU, with the tiny model by default." if device is None
                              else "Running on the CPU as requested.")
        self.notes.append(autocast_note)

    def resolve(self, preset: str, kind: str = "object") -> tuple[str, str]:
        """(preset, why) for a requested preset ("auto" or a name)."""
        if preset != "auto":
            return preset, "chosen"
        if self.device == "cpu":
            return "tiny", "auto: no GPU, so the small CPU model"
        return ("human3diffusion", "auto: a GPU and a person") if kind == "person" else ("gen3diffusion", "auto: a GPU and an object")

    def get(self, preset: str, kind: str = "object"):
        import torch

        from gen3d.pipeline import Gen3DPipeline
        from gen3d.weights import WeightsError

        name, why = self.resolve(preset, kind)
        if name in ("gen3diffusion", "human3diffusion") and self.device == "cpu" and not self.allow_released_on_cpu:
            raise WeightsError(f"{name}: {RELEASED_ON_CPU}")
        with self.lock:
            if self.pipe is not None and self.preset == name:
                return self.pipe
            try:
                if self.loader is not None:
                    pipe = self.loader(name)
                else:
                    pipe = Gen3DPipeline.from_pretrained(name, device=self.device, dtype=getattr(torch, self.dtype),
                                                         checkpoint_dir=self.checkpoint_dir, base_dir=self.base_dir)
            except Exception as err:  # noqa: BLE001 - diffusers/transformers parts fail with OSError, ValueError, ...
                reason = str(err) if isinstance(err, WeightsError) else f"{type(err).__name__}: {err}"
                self.error = f"could not load '{name}': {reason}"
                raise WeightsError(self.error) from err
            self.pipe, self.preset, self.error = pipe, name, None
            self.notes = [n for n in self.notes if not n.startswith("Loaded")] + [f"Loaded {name} ({why})."]
            return pipe

    def status(self) -> str:
        lines = []
        if self.pipe is not None:
            lines.append(f"**Model:** {self.pipe.describe()}")
            lines += [f"- {note}" for note in self.pipe.notes]
        else:
            lines.append(f"**Model:** none loaded yet (device {self.device}, {self.dtype}); it loads on first use.")
        lines += [f"- {note}" for note in self.notes]
        if self.error:
            lines.append(f"- **Load failed:** {self.error}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------- examples
# The app's examples: held-out procedural objects (seeds >= 1,000,000 are never trained on), drawn by
# gen3d itself so that their pictures carry no licence. (name, domain, family, seed)
EXAMPLE_OBJECTS = (
    ("mushroom", "object", "mushroom", 1_000_001),
    ("car", "object", "car", 1_000_002),
    ("duck", "object", "duck", 1_000_003),
    ("snowman", "object", "snowman", 1_000_004),
    ("person", "avatar", "person", 1_000_005),
)


def render_source(seed: int, domain: str, family: str, size: int = 256) -> np.ndarray:
    """The input view of a procedural object as an RGBA uint8 image [size, size, 4]."""
    import torch

    from gen3d.cameras import target_cameras
    from gen3d.data.families import sample_object
    from gen3d.data.procedural import render_object

    views = render_object(sample_object(seed, domain, family), target_cameras(size)[:1], supersample=3)
    alpha = views.alpha[0].clamp(0, 1)
    # un-composite the white background where coverage is partial, so the RGBA is clean
    rgb = ((views.rgb[0] - (1 - alpha)) / alpha.clamp_min(1e-3)).clamp(0, 1) * (alpha > 0)
    rgba = torch.cat([rgb, alpha]).permute(1, 2, 0)
    return (rgba * 255).round().to(torch.uint8).numpy()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """python -m gen3d.demo examples [--preset tiny] [--out assets/examples] [--steps 50]"""
    import argparse

    from PIL import Image

    from gen3d.pipeline import Gen3DPipeline

    parser = argparse.ArgumentParser(prog="python -m gen3d.demo", description="precompute the app's examples")
    parser.add_argument("command", choices=["examples"])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "assets" / "examples"))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None, help="comma-separated example names")
    parser.add_argument("--autocast", default="auto", choices=("auto", "off", "bfloat16", "float16"),
                        help="as the app's: auto = bfloat16 network passes where the CPU computes it natively")
    args = parser.parse_args(argv)
    from gen3d.sampler import resolve_autocast

    pipe = Gen3DPipeline.from_pretrained(args.preset)
    autocast, note = resolve_autocast(args.autocast, str(pipe.device))
    print(note)
    chosen = [e for e in EXAMPLE_OBJECTS if args.only is None or e[0] in args.only.split(",")]
    for name, domain, family, seed in chosen:
        run = Path(args.out) / name
        run.mkdir(parents=True, exist_ok=True)
        source = run / "source.png"
        Image.fromarray(render_source(seed, domain, family)).save(source)
        kind = "person" if domain == "avatar" else "object"
        keep = run.parent / f".{name}.source.png"
        shutil.copy(source, keep)  # write_examples clears the run folder
        write_examples(pipe, [(name, keep, kind)], args.out, steps=args.steps, seed=args.seed, autocast=autocast)
        shutil.move(keep, source)
        print(f"{name}: {run}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

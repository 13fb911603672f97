"""Load test: many users at once against the app on loopback, each with its own image and seed.

    python benchmarks/load_test.py [--users 1,2,4,8,12] [--steps 10] [--queue-size 16] [--preset tiny]
                                   [--verify 1] [--threads 2] [--turntable-frames 36]

Starts app.py in this process (tiny preset; the tiny architecture with random weights when the trained
checkpoint is absent, and the output says so) and, for each number of users N, submits N gradio_client
sessions at once. Each user uploads its own image (a disc of its own colour and place) with its own seed.
Prints one row per N: wall time, mean and max time per user (submission to final result), how many
results were correct, how many users were told the queue is full, and the server's peak resident memory
during the round (sampled every 50 ms; the clients share the process, so it is an upper bound).

A result is correct when its download equals the gs.ply in that user's own session folder, its
metrics.json has the user's seed, no two users got the same splat, and, for --verify users per round,
a direct run of gen3d's sampler on the same image and seed gives the same Gaussian means.
Requests beyond --queue-size waiting runs are refused at once ("busy"), never left hanging.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny preset needs no network
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODE_3D = "3D-synchronized (the paper)"


def rss_bytes() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Highest resident memory of this process while the block runs (sampled every ``every`` s)."""

    def __init__(self, every: float = 0.05):
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakRSS":
        self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def load_pipeline(preset: str):
    from gen3d.pipeline import Gen3DPipeline, tiny_pipeline
    from gen3d.weights import WeightsError

    try:
        return Gen3DPipeline.from_pretrained(preset), preset
    except WeightsError as err:
        if preset != "tiny":
            raise
        print(f"(trained tiny checkpoint unavailable: {err}\n using the tiny architecture with random weights)")
        return tiny_pipeline(seed=0), "tiny architecture, random weights"


def user_image(index: int, folder: Path) -> Path:
    """A disc of the user's own colour, size and place on a transparent background (alpha = the mask)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(index)
    size = 128
    yy, xx = np.mgrid[:size, :size] / size
    centre, radius = rng.uniform(0.35, 0.65, 2), rng.uniform(0.15, 0.3)
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2] = (*rng.integers(30, 230, 3), 255)
    path = folder / f"user{index}.png"
    Image.fromarray(rgba).save(path)
    return path


def start_app(pipe, outputs: Path, queue_size: int, turntable_frames: int):
    import app
    from gen3d.demo import ModelManager, TrajectoryWriter

    if turntable_frames != 36:  # the app's own setting; fewer frames make rounds faster, not more realistic
        TrajectoryWriter.finish = functools.partialmethod(TrajectoryWriter.finish, turntable_frames=turntable_frames)
    app.configure(preset="tiny", manager=ModelManager(device="cpu", loader=lambda name: pipe), outputs=outputs)
    demo = app.build_demo().queue(default_concurrency_limit=1, max_size=queue_size)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, max_file_size="20mb",
                allowed_paths=[str(outputs)])
    return demo


def session_runs(outputs: Path, session_hash: str) -> list[Path]:
    folder = outputs / "".join(c for c in session_hash if c.isalnum())[:40]
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def direct_means(pipe, image: Path, seed: int, steps: int):
    """Gaussian means of a direct run (no app) on the same image and seed, through the same .ply writer."""
    from gen3d.demo import run_modes
    from gen3d.gaussians import load_ply, save_ply
    from gen3d.preprocess import preprocess

    pre = preprocess(image, border_ratio=0.45, size=pipe.config.image_size)  # the image's alpha is the mask
    for step in run_modes(pipe, pre.image, ("3d",), steps, 5.0, seed):
        record = step["3d"]
    buffer = Path(tempfile.mkdtemp()) / "gs.ply"
    save_ply(record.final_gaussians, buffer)
    return load_ply(buffer).means


def run_round(url: str, pipe, outputs: Path, n: int, steps: int, verify: int, timeout: float, folder: Path) -> dict:
    import torch
    from gradio_client import Client, handle_file
    from gradio_client.utils import QueueError

    from gen3d.gaussians import load_ply

    users = []
    for i in range(n):
        seed = 1000 * n + i
        users.append({"seed": seed, "image": user_image(seed, folder), "client": Client(url, verbose=False)})
    with PeakRSS() as memory:
        start = time.perf_counter()
        for user in users:
            user["start"] = time.perf_counter()
            user["job"] = user["client"].submit(
                handle_file(str(user["image"])), "object", True, 0.45, "tiny", steps, 5.0, user["seed"], MODE_3D, 0,
                100, api_name="/generate")
            user["job"].add_done_callback(lambda _, user=user: user.setdefault("end", time.perf_counter()))
        for user in users:
            try:
                user["final"] = user["job"].result(timeout=max(1.0, timeout - (time.perf_counter() - start)))
                user["outcome"] = "done" if "Done" in user["final"][2] else "incomplete"
            except QueueError:
                user["outcome"] = "busy"
            except TimeoutError:
                user["outcome"] = "timeout"
            except Exception as err:  # noqa: BLE001 - reported in the table, the round goes on
                user["outcome"] = f"error: {err}"
            user["seconds"] = user.get("end", time.perf_counter()) - user["start"]  # to its result or refusal
        wall = time.perf_counter() - start
    done = [u for u in users if u["outcome"] == "done"]
    plys = set()
    for user in done:  # own session folder, own seed, own content
        downloads = {Path(f).name: Path(f) for f in user["final"][7]}
        runs = session_runs(outputs, user["client"].session_hash)
        own = len(runs) == 1 and downloads["gs.ply"].read_bytes() == (runs[0] / "3d" / "gs.ply").read_bytes()
        seed_ok = json.loads(downloads["metrics.json"].read_text())["seed"] == user["seed"]
        user["correct"] = own and seed_ok
        plys.add(downloads["gs.ply"].read_bytes())
    if len(plys) != len(done):
        for user in done:
            user["correct"] = False
    for user in done[-verify:] if verify else []:  # the last served waited longest: the likeliest to be crossed
        got = load_ply(Path(next(f for f in user["final"][7] if Path(f).name == "gs.ply"))).means
        expected = direct_means(pipe, user["image"], user["seed"], steps)
        user["correct"] &= got.shape == expected.shape and torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    times = [u["seconds"] for u in done]
    for user in users:
        user["client"].close()
    return {"users": n, "wall": wall, "mean": sum(times) / len(times) if times else float("nan"),
            "max": max(times) if times else float("nan"), "correct": sum(u.get("correct", False) for u in done),
            "done": len(done), "busy": sum(u["outcome"] == "busy" for u in users),
            "busy_max": max((u["seconds"] for u in users if u["outcome"] == "busy"), default=0.0),
            "other": [u["outcome"] for u in users if u["outcome"] not in ("done", "busy")],
            "peak_rss_mb": memory.peak / 2**20}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", default="1,2,4,8,12", help="comma-separated numbers of simultaneous users")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--queue-size", type=int, default=16, help="the app's --queue-size (runs waiting at most)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--verify", type=int, default=1, help="users per round re-run directly to check content")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--turntable-frames", type=int, default=36, help="36 is what the app renders")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a round may take before users time out")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    pipe, name = load_pipeline(args.preset)
    outputs = Path(tempfile.mkdtemp(prefix="gen3d-load-"))
    demo = start_app(pipe, outputs, args.queue_size, args.turntable_frames)
    url = demo.local_url.rstrip("/")
    print(f"model: {name} ({pipe.describe()}); {args.steps} steps; queue size {args.queue_size}; "
          f"turntable {args.turntable_frames} frames; {args.threads} torch threads, {os.cpu_count()} CPUs; "
          f"server {url}; RSS at start {rss_bytes() / 2**20:.0f} MB")
    header = (f"{'users':>5} | {'wall s':>7} | {'mean s/user':>11} | {'max s/user':>10} | {'correct':>9} | "
              f"{'busy (answered in)':>18} | peak RSS MB")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.users.split(",")):
            row = run_round(url, pipe, outputs, n, args.steps, args.verify, args.timeout, Path(tmp))
            rows.append(row)
            print(f"  {n} users: {row['done']} done, {row['busy']} busy, {row['wall']:.1f} s"
                  + (f", other: {row['other']}" if row["other"] else ""), flush=True)
    demo.close()
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        busy = f"{r['busy']} ({r['busy_max']:.1f} s)" if r["busy"] else "0"
        print(f"{r['users']:>5} | {r['wall']:>7.1f} | {r['mean']:>11.1f} | {r['max']:>10.1f} | "
              f"{r['correct']:>3}/{r['done']:<5} | {busy:>18} | {r['peak_rss_mb']:>11.0f}")
    ok = all(r["correct"] == r["done"] and not r["other"] for r in rows)
    print("\nall results correct, nothing hung" if ok else "\nSOME RESULTS WRONG OR HUNG")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

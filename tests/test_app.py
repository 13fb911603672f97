"""The app through its API (gradio_client against a local server) and its pieces in gen3d.demo.

The server runs the tiny architecture with random weights (fast, independent of the shipped
checkpoint); the shipped examples are read from assets/examples.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO


def mushroom_png(folder: Path) -> Path:
    from PIL import Image

    from gen3d.demo import render_source

    path = folder / "mushroom.png"
    Image.fromarray(render_source(1_000_001, "object", "mushroom", size=128)).save(path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import app
    from gen3d.demo import ModelManager
    from gen3d.pipeline import tiny_pipeline

    out = tmp_path_factory.mktemp("app_outputs")
    app.configure(preset="tiny", manager=ModelManager(device="cpu", loader=lambda name: tiny_pipeline(seed=0)),
                  outputs=out)
    demo = app.build_demo().queue(default_concurrency_limit=1, max_size=8)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(out), str(app.EXAMPLES)], max_file_size="20mb")
    yield demo, out
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[0].local_url, verbose=False)


def generate_args(image: Path, steps: int = 3, mode: str = "3D-synchronized (the paper)", seed: int = 0):
    from gradio_client import handle_file

    return dict(path=handle_file(str(image)), kind="object", remove_background=True, border_ratio=0.45, preset="tiny",
                steps=steps, cfg=5.0, seed=seed, mode=mode, w_start=0, w_end=100, api_name="/generate")


def test_generate_streams_one_update_per_step_and_ends_with_a_ply(client, tmp_path):
    from gen3d.gaussians import load_ply

    job = client.submit(**generate_args(mushroom_png(tmp_path), steps=3))
    updates = list(job)
    statuses = [u[2] for u in updates]
    steps_seen = [s for s in statuses if s and "step " in s and "Done" not in s]
    assert [s.split("step ")[1].split(" ")[0] for s in steps_seen] == ["1/3", "2/3", "3/3"], statuses
    final = updates[-1]
    assert "Done" in final[2]
    files = [Path(f) for f in final[7]]
    ply = next(f for f in files if f.name == "gs.ply")
    gaussians = load_ply(ply)
    assert len(gaussians) == 32 * 32 * 4 and torch.isfinite(gaussians.means).all()
    assert {f.name for f in files} >= {"gs.ply", "gs.splat", "trajectory.mp4", "turntable.mp4", "metrics.json"}
    # the scrubber then shows any recorded step of this session's run
    panel_3d, panel_2d, status = client.predict(2, api_name="/show_step")
    assert "step 2/3" in status and Path(panel_3d).is_file() and panel_2d is None
    # and the mesh button turns this session's splat into a .glb added to the downloads
    import trimesh

    glb, files = client.predict("low", api_name="/extract_mesh")
    assert Path(glb).name == "mesh_low.glb" and "mesh_low.glb" in {Path(f).name for f in files}
    assert len(trimesh.load(glb, force="mesh").faces) > 0


def test_both_modes_stream_side_by_side_and_differ(client, tmp_path):
    from PIL import Image

    job = client.submit(**generate_args(mushroom_png(tmp_path), steps=2, mode="Both, side by side (same seed)"))
    updates = list(job)
    last_step = [u for u in updates if u[2] and "step 2/2" in u[2]][0]
    assert "3D-synchronized" in last_step[2] and "2D-only" in last_step[2]
    a = np.asarray(Image.open(last_step[0]), dtype=np.float32)
    b = np.asarray(Image.open(last_step[1]), dtype=np.float32)
    assert a.shape == b.shape and np.abs(a - b).mean() > 0.5  # 3D guidance changed the trajectory


@pytest.mark.parametrize("content, name", [(b"this is not an image", "notes.png"), (b"", "empty.jpg"),
                                           (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "truncated.png")])
def test_bad_uploads_get_a_clear_error_and_the_app_stays_up(client, tmp_path, content, name):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bad = tmp_path / name
    bad.write_bytes(content)
    with pytest.raises(AppError, match="cannot be used"):
        client.predict(handle_file(str(bad)), "object", True, 0.45, api_name="/prepare")
    image, report = client.predict(handle_file(str(mushroom_png(tmp_path))), "object", True, 0.45, api_name="/prepare")
    assert Path(image).is_file() and "alpha" in report.lower()


def test_invalid_settings_are_refused_with_reasons(client, tmp_path):
    from gradio_client.exceptions import AppError

    args = generate_args(mushroom_png(tmp_path))
    with pytest.raises(AppError, match="window"):
        client.predict(**(args | dict(w_start=80, w_end=20)))
    with pytest.raises(AppError, match="maximum value 100"):  # the slider's own bound check names the limit
        client.predict(**(args | dict(steps=1000)))


def test_released_model_on_cpu_is_refused_with_a_reason(client, tmp_path):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="need a CUDA GPU"):
        client.predict(**(generate_args(mushroom_png(tmp_path)) | dict(preset="gen3diffusion")))


def test_examples_are_precomputed_and_open_instantly(client):
    from gen3d.demo import examples_index, load_run

    examples = examples_index(REPO / "assets" / "examples")
    assert len(examples) >= 4 and any(e["kind"] == "person" for e in examples)
    for example in examples:
        runs = load_run(example["run"])
        assert set(runs) == {"3d", "2d"}
        for trajectory in runs.values():
            assert len(trajectory.steps) == trajectory.extra["steps"]
            assert all(trajectory.panel(i).is_file() for i in range(len(trajectory.steps)))
            assert (trajectory.folder / "viewer.ply").is_file()
    out = client.predict(examples[0]["name"], api_name="/load_example")
    assert "Precomputed example" in out[2] and Path(out[4]).name == "viewer.ply"


# ------------------------------------------------------------------------------------ gen3d.demo pieces
def test_step_panel_rows_and_difference():
    from gen3d.demo import DIFF_GAIN, step_panel

    xt, a, b = torch.zeros(4, 3, 8, 8), torch.full((4, 3, 8, 8), 0.5), torch.full((4, 3, 8, 8), 0.6)
    panel = step_panel(xt, a, b, pad=0)
    assert panel.shape == (32, 32, 3)
    assert panel[:8].max() == 0 and abs(int(panel[12, 4, 0]) - 128) <= 1
    assert abs(int(panel[28, 4, 0]) - round(0.1 * DIFF_GAIN * 255)) <= 1  # |x̃0 - x̂0| amplified


def test_run_folders_keep_sessions_apart_and_refuse_outside_paths(tmp_path):
    import os
    import time

    from gen3d.demo import RunFolders

    folders = RunFolders(tmp_path / "runs", max_age_s=60)
    a, b = folders.new_run("session-a"), folders.new_run("../../etc")
    assert a != b and folders.contains(a) and folders.contains(b) and b.parent.name == "etc"
    assert not folders.contains(tmp_path) and not folders.contains("/etc/passwd")
    folders.remove(tmp_path)  # outside: ignored
    assert tmp_path.is_dir()
    old = time.time() - 3600
    os.utime(a.parent, (old, old))
    assert folders.clean_old() == 1 and not a.exists() and b.exists()


def test_non_finite_records_stop_the_run():
    from types import SimpleNamespace

    from gen3d.demo import NonFiniteError, check_finite
    from gen3d.gaussians import random_gaussians

    images = torch.zeros(4, 3, 8, 8)
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    record = SimpleNamespace(index=4, xt_images=images, x0_tilde_images=bad, x0_hat_images=images,
                             gaussians=random_gaussians(8, torch.Generator().manual_seed(0)))
    with pytest.raises(NonFiniteError, match="step 5"):
        check_finite(record)


def test_manager_reports_failed_loads_and_keeps_the_previous_model():
    from gen3d.demo import ModelManager
    from gen3d.pipeline import tiny_pipeline
    from gen3d.weights import WeightsError

    def loader(name):
        if name == "broken":
            raise WeightsError("model.safetensors is truncated")
        return tiny_pipeline(seed=0)

    manager = ModelManager(device="cpu", loader=loader)
    pipe = manager.get("auto")
    assert manager.preset == "tiny" and "on the CPU" in manager.status() and "Loaded tiny" in manager.status()
    with pytest.raises(WeightsError, match="truncated"):
        manager.get("broken")
    assert manager.pipe is pipe and "Load failed" in manager.status()


def test_trajectory_json_round_trip(tmp_path):
    from gen3d.demo import StepInfo, Trajectory, TrajectoryWriter

    writer = TrajectoryWriter(tmp_path / "3d", "3d")
    writer.steps = [StepInfo(index=i, num_steps=2, t=t, alpha_bar=a, guided=True, psnr=[20.0, 21.0], seconds=0.1)
                    for i, (t, a) in enumerate([(501, 0.3), (1, 0.99)])]
    writer.write_json({"seed": 3, "steps": 2})
    loaded = Trajectory.load(tmp_path / "3d")
    assert loaded.steps == writer.steps and loaded.extra["seed"] == 3 and loaded.mode == "3d"
    assert json.loads((tmp_path / "3d" / "trajectory.json").read_text())["records"][1]["t"] == 1


def test_main_thread_runner_runs_calls_and_streams_on_the_serving_thread():
    """What `python app.py` does with its main thread: handlers' calls run there, errors and closing reach them."""
    import threading

    from gen3d.demo import MainThreadRunner

    runner, stop = MainThreadRunner(), threading.Event()
    assert runner.call(threading.current_thread) is threading.current_thread()  # nothing serves: in place
    server = threading.Thread(target=runner.serve, args=(stop,), daemon=True)
    server.start()
    while not runner.serving:
        pass
    assert runner.call(threading.current_thread) is server
    with pytest.raises(ZeroDivisionError):
        runner.call(lambda: 1 / 0)
    closed_on = []

    def numbers():
        try:
            for i in range(5):
                yield i, threading.current_thread()
        finally:
            closed_on.append(threading.current_thread())

    stream = runner.iterate(numbers())
    first, second = next(stream), next(stream)
    assert [first[0], second[0]] == [0, 1] and first[1] is server and second[1] is server
    stream.close()  # a stopped run: the underlying generator is closed, on the serving thread
    assert closed_on == [server]
    stop.set()
    server.join(timeout=5)
    assert not runner.serving and runner.call(threading.current_thread) is threading.current_thread()

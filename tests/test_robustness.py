"""Issue #8: the app under load, faults and hostile input; the CLI and checkpoint folders against bad files.

The server runs a *micro* random pipeline: the tiny architecture shrunk to 32 px and 4 x 8² = 256
Gaussians, so that a dozen runs fit in about a minute on a loaded 2-core CPU, and its turntables are
cut to 2 frames. What is checked here (sessions kept apart, runs stopped and cleaned up, bad input
refused) does not depend on the network's size; benchmarks/load_test.py measures the tiny preset.
"""

import errno
import functools
import io
import json
import os
import pickle
import re
import shutil
import struct
import time
import uuid
import zlib
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO

GENERATE = "/generate"
MODE_3D = "3D-synchronized (the paper)"
TIMEOUT = 120  # s: no call may wait longer than this (a hang fails the test instead of stalling it)


# ---------------------------------------------------------------------------------------------- helpers
def micro_pipeline(seed: int = 0):
    """The tiny architecture at 32 px, 32 channels, 256 Gaussians, random weights (about 5x cheaper)."""
    from gen3d.conditioning import LearnedPromptConfig
    from gen3d.mv_unet import MultiViewUNetConfig
    from gen3d.pipeline import TINY_VAE_CONFIG, PipelineConfig, build_pipeline
    from gen3d.reconstructor import ReconstructorConfig

    recon = ReconstructorConfig(input_size=32, splat_size=8, down_channels=(32, 32, 32, 32),
                                down_attention=(False,) * 4, mid_attention=False, up_channels=(32, 32),
                                up_attention=(False, False), num_heads=4, layers_per_block=1)
    unet = MultiViewUNetConfig(model_channels=32, num_res_blocks=1, attention_resolutions=(2,), channel_mult=(1, 1),
                               num_head_channels=32, context_dim=32, ip_in_dim=64)
    vae = dict(TINY_VAE_CONFIG, block_out_channels=(32, 32, 32), sample_size=32)
    clip = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                patch_size=8)
    config = PipelineConfig(name="micro-random", image_size=32, render_size=32)
    return build_pipeline(config, unet, recon, vae, clip, LearnedPromptConfig(num_tokens=4, width=32), seed=seed).eval()


def disc_rgba(colour=(200, 40, 40), size: int = 64, radius: float = 0.3, centre=(0.5, 0.5)) -> np.ndarray:
    """A filled disc on a transparent background: [size, size, 4] uint8 (alpha is the mask: no remover runs)."""
    yy, xx = np.mgrid[:size, :size] / size
    inside = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[inside] = (*colour, 255)
    return rgba


def on_white(rgba: np.ndarray) -> np.ndarray:
    return np.where(rgba[..., 3:] > 0, rgba[..., :3], 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str, mode: str | None = None, **options) -> bytes:
    image = Image.fromarray(array)
    image = image.convert(mode) if mode else image
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A small PNG whose IHDR claims width x height (nothing that size is ever allocated)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def png16(rgb: np.ndarray) -> bytes:
    """A 16-bit RGB PNG of an 8-bit [H, W, 3] array (PIL writes no 16-bit RGB)."""
    data = (rgb.astype(">u2") * 257).tobytes()
    row = rgb.shape[1] * 6
    raw = b"".join(b"\x00" + data[i * row:(i + 1) * row] for i in range(rgb.shape[0]))
    header = struct.pack(">IIBBBBB", rgb.shape[1], rgb.shape[0], 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(raw))
            + png_chunk(b"IEND", b""))


def animated_gif(rgba: np.ndarray) -> bytes:
    frames = [Image.fromarray(on_white(rgba))] + [Image.new("RGB", rgba.shape[:2], c) for c in ((0, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def flip(data: bytes, at: float = 0.5, count: int = 64) -> bytes:
    data = bytearray(data)
    start = int(len(data) * at)
    data[start:start + count] = bytes(b ^ 0x5A for b in data[start:start + count])
    return bytes(data)


def safetensors_bytes() -> bytes:
    from safetensors.torch import save

    return save({"weight": torch.zeros(4, 4)})


def generate_args(image: Path, seed: int = 0, steps: int = 1, remove_background: bool = True, preset: str = "tiny"):
    from gradio_client import handle_file

    return dict(path=handle_file(str(image)), kind="object", remove_background=remove_background, border_ratio=0.45,
                preset=preset, steps=steps, cfg=5.0, seed=seed, mode=MODE_3D, w_start=0, w_end=100, api_name=GENERATE)


def session_dir(server, session_hash: str) -> Path:
    return server.out / ("".join(c for c in session_hash if c.isalnum())[:40] or "anonymous")


def runs_of(server, session_hash: str) -> list[Path]:
    folder = session_dir(server, session_hash)
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def wait_until(condition, timeout: float = 30.0, every: float = 0.2) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(every)
    return condition()


def reference_means(pipe, image: Path, seed: int, steps: int, tmp: Path, autocast=None) -> torch.Tensor:
    """The Gaussian means of a direct, non-app run on the same input and seed (and the app's autocast),
    through the same .ply writer."""
    from gen3d.cli import keep_everything
    from gen3d.demo import run_modes
    from gen3d.gaussians import load_ply, save_ply
    from gen3d.preprocess import preprocess

    pre = preprocess(image, border_ratio=0.45, size=pipe.config.image_size, remover=keep_everything)  # alpha is used
    for step in run_modes(pipe, pre.image, ("3d",), steps, 5.0, seed, autocast=autocast):
        record = step["3d"]
    save_ply(record.final_gaussians, tmp / f"reference_{seed}.ply")
    return load_ply(tmp / f"reference_{seed}.ply").means


def fn_index(url: str, api_name: str) -> int:
    config = httpx.get(f"{url}/config", timeout=30).json()
    return next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)


def raw_join(url: str, api_name: str, data: list, session_hash: str) -> httpx.Response:
    """The browser's protocol without gradio_client: join the queue with any session hash and payload."""
    body = {"data": data, "fn_index": fn_index(url, api_name), "session_hash": session_hash, "event_data": None,
            "trigger_id": None}
    return httpx.post(f"{url}/gradio_api/queue/join", json=body, timeout=30)


def raw_messages(url: str, session_hash: str, stop_after=None, timeout: float = TIMEOUT):
    """SSE messages of a session until its event completes (or ``stop_after(messages)`` says to disconnect)."""
    messages = []
    with httpx.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": session_hash},
                      timeout=timeout) as response:
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            messages.append(json.loads(line[5:]))
            if messages[-1]["msg"] == "process_completed" or (stop_after and stop_after(messages)):
                break
    return messages  # leaving the block closes the connection: a disconnect when stopped early


def upload(url: str, path: Path) -> dict:
    response = httpx.post(f"{url}/gradio_api/upload", files={"files": (path.name, path.read_bytes())}, timeout=30)
    response.raise_for_status()
    return {"path": response.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def launch(demo, out: Path, queue_size: int = 16):
    demo.queue(default_concurrency_limit=1, max_size=queue_size).launch(
        server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, max_file_size="20mb",
        allowed_paths=[str(out), str(REPO / "assets" / "examples")])
    return demo.local_url.rstrip("/")


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import app
    from gen3d.demo import ModelManager, TrajectoryWriter

    pipe = micro_pipeline(seed=0)
    calls: list[float] = []  # one entry per reconstructor pass: shows whether a run is still computing
    pipe.reconstructor.register_forward_hook(lambda *args: calls.append(time.monotonic()))
    out = tmp_path_factory.mktemp("robust_outputs")
    manager = ModelManager(device="cpu", loader=lambda name: pipe)
    with pytest.MonkeyPatch.context() as patch:
        short_turntable = functools.partialmethod(TrajectoryWriter.finish, turntable_frames=2, size=32)
        patch.setattr(TrajectoryWriter, "finish", short_turntable)
        app.configure(preset="tiny", manager=manager, outputs=out)
        demo = app.build_demo()
        url = launch(demo, out)
        yield SimpleNamespace(app=app, demo=demo, url=url, out=out, pipe=pipe, calls=calls, manager=manager)
        demo.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False)


@pytest.fixture(scope="module")
def good_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "disc.png"
    path.write_bytes(encode(disc_rgba(), "PNG"))
    return path


@pytest.fixture(scope="module")
def micro_folder(tmp_path_factory) -> Path:
    return micro_pipeline(seed=0).save_pretrained(tmp_path_factory.mktemp("ckpt") / "micro")


# ------------------------------------------------------------------------------------------------- load
def test_concurrent_sessions_each_get_their_own_complete_result(server, tmp_path):
    """4 users at once, each with an own image and seed: every one gets a complete result, from its own
    session folder, equal to a direct run of the same image and seed; no two results are the same."""
    from gradio_client import Client

    from gen3d.gaussians import load_ply

    colours = [(200, 40, 40), (40, 160, 40), (40, 60, 200), (220, 180, 30)]
    users = []
    for i, colour in enumerate(colours):
        image = tmp_path / f"user{i}.png"
        image.write_bytes(encode(disc_rgba(colour, radius=0.2 + 0.05 * i, centre=(0.4 + 0.05 * i, 0.5)), "PNG"))
        users.append(SimpleNamespace(image=image, seed=100 + i, client=Client(server.url, verbose=False)))
    for user in users:  # all queued at once; the app runs one at a time (concurrency_limit=1)
        user.job = user.client.submit(**generate_args(user.image, seed=user.seed))
    for user in users:
        final = user.job.result(timeout=TIMEOUT)
        assert "Done" in final[2], final[2]
        user.downloads = {Path(f).name: Path(f) for f in final[7]}
        user.runs = runs_of(server, user.client.session_hash)
    assert len({u.client.session_hash for u in users}) == len(users)
    for user in users:
        assert len(user.runs) == 1, user.runs  # exactly one run, in this session's own folder
        ply = user.runs[0] / "3d" / "gs.ply"
        assert user.downloads["gs.ply"].read_bytes() == ply.read_bytes()  # what the user got is its own run
        assert json.loads(user.downloads["metrics.json"].read_text())["seed"] == user.seed
        expected = reference_means(server.pipe, user.image, user.seed, 1, tmp_path, autocast=server.manager.autocast)
        # same ops on the same CPU; the tolerance only covers thread-count-dependent summation order
        torch.testing.assert_close(load_ply(ply).means, expected, atol=1e-4, rtol=1e-4)
    plys = [(u.runs[0] / "3d" / "gs.ply").read_bytes() for u in users]
    assert len(set(plys)) == len(users)
    # a session's state is held by the server: another session cannot point the scrubber at these runs
    forged = {"run": str(users[0].runs[0]), "modes": ["3d"], "steps": 1}
    session = uuid.uuid4().hex
    assert raw_join(server.url, "show_step", [forged, 1], session).status_code == 200
    result = raw_messages(server.url, session)[-1]
    assert not result["success"] and "Nothing to show yet" in (result["output"].get("error") or "")


def test_requests_beyond_the_queue_limit_are_told_the_app_is_busy(server, good_png):
    """max_size=1: one run computing, one waiting; the next is refused at once with 'Queue is full'."""
    from gradio_client import Client
    from gradio_client.utils import QueueError, Status

    busy = server.app.build_demo()  # a second page on the same model and folders, with a queue of one
    url = launch(busy, server.out, queue_size=1)
    try:
        running, waiting, refused = (Client(url, verbose=False) for _ in range(3))
        first = running.submit(**generate_args(good_png, steps=40))
        assert wait_until(lambda: len(first.outputs()) >= 2, TIMEOUT), "the first run never started"
        second = waiting.submit(**generate_args(good_png, steps=1))
        assert wait_until(lambda: second.status().code == Status.IN_QUEUE, 30), second.status()
        start = time.monotonic()
        with pytest.raises(QueueError, match="Queue is full"):
            refused.submit(**generate_args(good_png, steps=1)).result(timeout=30)
        response = raw_join(url, GENERATE.strip("/"), [None] * 11, uuid.uuid4().hex)  # the browser's path
        assert response.status_code == 503 and "Queue is full" in response.text
        assert time.monotonic() - start < 10  # refused at once, not after a wait
        # the Stop button's path: cancelling stops the running sampler and removes its partial run
        second.cancel()
        assert runs_of(server, running.session_hash), "the running job has a partial run folder"
        first.cancel()
        assert wait_until(lambda: not runs_of(server, running.session_hash), 30), "partial run not removed"
        seen = len(server.calls)
        time.sleep(2.0)
        assert len(server.calls) == seen, "the sampler kept computing after the cancel"
        assert not runs_of(server, waiting.session_hash)  # cancelled while waiting: never ran
    finally:
        busy.close()


def test_a_client_that_disconnects_mid_run_stops_its_work_and_its_files_go(server, good_png):
    """The browser closes mid-run (raw SSE, no gradio_client); the session hash is hostile on top."""
    session = f"../../escape-{uuid.uuid4().hex[:8]}"
    data = [upload(server.url, good_png), "object", True, 0.45, "tiny", 40, 5.0, 7, MODE_3D, 0, 100]
    assert raw_join(server.url, "generate", data, session).status_code == 200
    seen_running = {}

    def two_steps_then_leave(messages) -> bool:
        steps = [m for m in messages if m["msg"] == "process_generating"]
        if len(steps) >= 3:  # the "Starting" update and two steps
            seen_running["runs"] = runs_of(server, session)
            return True
        return False

    messages = raw_messages(server.url, session, stop_after=two_steps_then_leave)
    assert messages[-1]["msg"] == "process_generating", "the run ended before the client left"
    (run,) = seen_running["runs"]
    assert server.out in run.parents and run.parent.name.startswith("escape")  # "../../" was dropped
    assert not (server.out.parent.parent / session.split("/")[-1]).exists()
    assert wait_until(lambda: not run.exists(), 30), "the partial run of a gone client was not removed"
    seen = len(server.calls)
    time.sleep(2.0)
    assert len(server.calls) == seen, "the sampler kept computing for a gone client"


# ---------------------------------------------------------------------------------------------- faults
def test_a_run_that_produces_nan_is_stopped_with_a_message(server, client, good_png):
    from gradio_client.exceptions import AppError

    weight = next(server.pipe.reconstructor.parameters())
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.fill_(float("nan"))
        with pytest.raises(AppError, match=r"NaN.*step 1"):
            client.predict(**generate_args(good_png, steps=3))
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert not runs_of(server, client.session_hash)  # the partial run was removed
    final = client.predict(**generate_args(good_png, steps=1))  # and the app serves the next run
    assert "Done" in final[2]


def test_unusable_output_folders_give_an_error_not_a_crash(server, client, good_png, tmp_path, monkeypatch):
    from gradio_client.exceptions import AppError

    from gen3d.demo import RunFolders

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the outputs folder should be")
    monkeypatch.setitem(server.app.APP, "folders", RunFolders(blocker / "outputs"))  # the app starts anyway
    with pytest.raises(AppError, match="Could not create a folder for the results"):
        client.predict(**generate_args(good_png))
    monkeypatch.undo()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    before = set(runs_of(server, client.session_hash))
    monkeypatch.setattr("gen3d.export.save_image", disk_full)
    with pytest.raises(AppError, match="No space left on device"):
        client.predict(**generate_args(good_png))
    monkeypatch.undo()
    assert set(runs_of(server, client.session_hash)) == before  # the partial run was removed
    image, _ = client.predict(generate_args(good_png)["path"], "object", True, 0.45, api_name="/prepare")
    assert Path(image).is_file()


def test_a_checkpoint_that_fails_to_load_leaves_the_app_up_with_a_clear_status(server, client, good_png,
                                                                             micro_folder, tmp_path, monkeypatch):
    from gradio_client.exceptions import AppError

    from gen3d.pipeline import Gen3DPipeline

    broken = shutil.copytree(micro_folder, tmp_path / "broken")
    weights = broken / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a download cut short
    monkeypatch.setattr(server.manager, "allow_released_on_cpu", True)
    monkeypatch.setattr(server.manager, "loader", lambda name: server.pipe if name == "tiny"
                        else Gen3DPipeline.from_pretrained(broken))
    with pytest.raises(AppError, match="could not load 'gen3diffusion'.*diffusion_pytorch_model.safetensors"):
        client.predict(**generate_args(good_png, preset="gen3diffusion"))
    status = server.manager.status()
    assert "Load failed" in status and "micro-random" in status  # says why, keeps the model it had
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(AppError, match="cannot be used"):  # the model loaded; the input was refused after
        client.predict(**generate_args(bad))


# ------------------------------------------------------------------------------------- hostile input
EITHER = "either: "  # damaged bytes: where they land decides between a decode error and a concealed defect


def hostile_uploads(folder: Path, valid: bool = True) -> dict[str, tuple[Path, str | None]]:
    """name -> (file, words of the expected error, None for a valid result, or EITHER + words: an error with
    those words or a valid result); ``valid=False``: only the files that must be refused."""
    rgba = disc_rgba()
    png, jpeg, webp = encode(rgba, "PNG"), encode(on_white(rgba), "JPEG", quality=90), encode(rgba, "WEBP")
    files = {
        "random bytes": ("random.png", np.random.default_rng(0).bytes(65536), "not an image"),
        "truncated PNG": ("cut.png", png[: len(png) // 2], "truncated or corrupt"),
        "truncated JPEG": ("cut.jpg", jpeg[: len(jpeg) // 2], "truncated or corrupt"),
        "truncated WebP": ("cut.webp", webp[: len(webp) // 2], "truncated or corrupt"),
        "corrupt PNG (bytes flipped)": ("flipped.png", flip(png), EITHER + "truncated or corrupt"),
        "corrupt JPEG (bytes flipped)": ("flipped.jpg", flip(jpeg), EITHER + "truncated or corrupt"),
        "corrupt WebP (bytes flipped)": ("flipped.webp", flip(webp), EITHER + "truncated or corrupt"),
        "zero-byte WebP": ("empty.webp", b"", "zero-byte file"),
        "1x1 PNG": ("dot.png", encode(on_white(rgba)[:1, :1], "PNG"), "too small"),
        "PNG header claiming 20000x20000": ("huge.png", png_header_only(20000, 20000), "too large"),
        "decompression bomb (40000x40000)": ("bomb.png", png_header_only(40000, 40000), "decompression bomb"),
        "SVG": ("drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>', "SVG"),
        "SVG renamed .png": ("drawing.png", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        ".ply renamed .png": ("mesh.png", b"ply\nformat ascii 1.0\nelement vertex 1\nend_header\n0 0 0\n", "PLY"),
        ".safetensors renamed .png": ("weights.png", safetensors_bytes(), "truncated or corrupt"),
        "pickle renamed .png": ("model.png", pickle.dumps({"weight": [0.0] * 8}), "not an image"),
        "CMYK JPEG": ("cmyk.jpg", encode(on_white(rgba), "JPEG", mode="CMYK"), None),
        "16-bit PNG": ("deep.png", png16(on_white(rgba)), None),
        "animated GIF": ("anim.gif", animated_gif(rgba), None),
        "odd file name": ("a b;$(reboot)'\u00e9.png", png, None),
    }
    cases = {}
    for name, (filename, data, words) in files.items():
        if not valid and (words is None or words.startswith(EITHER)):
            continue
        (folder / filename).write_bytes(data)
        cases[name] = (folder / filename, words)
    return cases


def test_hostile_uploads_get_a_clear_error_or_a_valid_result(server, client, good_png, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    cases = hostile_uploads(tmp_path)
    for name, (path, words) in cases.items():
        start = time.monotonic()
        job = client.submit(handle_file(str(path)), "object", False, 0.45, api_name="/prepare")
        either = words is not None and words.startswith(EITHER)
        try:
            image, report = job.result(timeout=TIMEOUT)
        except AppError as refused:
            message = str(refused)
            assert words is not None and "cannot be used" in message and words.removeprefix(EITHER) in message, \
                (name, message)
            if not either:
                with pytest.raises(AppError, match="cannot be used") as error:  # /generate refuses it before running
                    client.submit(**generate_args(path, remove_background=False)).result(timeout=TIMEOUT)
                assert words in str(error.value), (name, str(error.value))
        else:
            assert words is None or either, f"{name}: accepted, expected an error naming {words!r}"
            assert np.asarray(Image.open(image)).shape == (256, 256, 3), name  # the preview at 256 px
        assert time.monotonic() - start < 30, f"{name}: took {time.monotonic() - start:.1f} s"
    big = tmp_path / "big.png"
    big.write_bytes(encode(disc_rgba(), "PNG") + os.urandom(21 * 1024 * 1024))  # > 20 MB
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # gradio_client checks first
        client.predict(handle_file(str(big)), "object", False, 0.45, api_name="/prepare")
    response = httpx.post(f"{server.url}/gradio_api/upload", files={"files": ("big.png", big.read_bytes())}, timeout=60)
    assert response.status_code == 413  # the server refuses it too
    image, _ = client.predict(handle_file(str(good_png)), "object", True, 0.45, api_name="/prepare")
    assert Path(image).is_file()  # still up


def test_only_the_apps_own_folders_are_served_and_user_paths_are_checked(server, tmp_path):
    served = server.out / "served.txt"
    served.write_text("an output")
    assert httpx.get(f"{server.url}/gradio_api/file={served}", timeout=30).status_code == 200
    for path in ("/etc/passwd", str(REPO / "app.py"), f"{server.out}/../../etc/passwd", f"{server.out}/x/../../secret",
                 "%2Fetc%2Fpasswd", str(REPO / "tests" / "conftest.py")):
        response = httpx.get(f"{server.url}/gradio_api/file={path}", timeout=30)
        assert response.status_code in (403, 404), (path, response.status_code)
        assert "root:" not in response.text
    # a payload naming a server file instead of an upload is refused before the handler reads it
    for path in ("/etc/passwd", str(REPO / "app.py")):
        session = uuid.uuid4().hex
        forged = {"path": path, "orig_name": "x.png", "meta": {"_type": "gradio.FileData"}}
        assert raw_join(server.url, "prepare", [forged, "object", False, 0.45], session).status_code == 200
        result = raw_messages(server.url, session)[-1]
        assert not result["success"] and "cannot be used" not in json.dumps(result), result


def test_restarting_the_app_keeps_finished_results(server, client, good_png):
    """A finished run's files survive a restart (configure + a new server on the same folder) and are served."""
    final = client.predict(**generate_args(good_png, seed=3))
    downloaded = next(Path(f) for f in final[7] if Path(f).name == "gs.ply")
    (run,) = [r for r in runs_of(server, client.session_hash)
              if (r / "3d" / "gs.ply").is_file() and (r / "3d" / "gs.ply").read_bytes() == downloaded.read_bytes()]
    server.app.configure(preset="tiny", manager=server.manager, outputs=server.out)  # what start-up does
    restarted = server.app.build_demo()
    url = launch(restarted, server.out)
    try:
        response = httpx.get(f"{url}/gradio_api/file={run / '3d' / 'gs.ply'}", timeout=30)
        assert response.status_code == 200 and response.content == downloaded.read_bytes()
    finally:
        restarted.close()


# ------------------------------------------------------------------------------------- CLI and checkpoints
def test_cli_folder_with_hostile_files_runs_the_good_ones_and_reports_the_rest(micro_folder, tmp_path, capsys):
    from gen3d.cli import IMAGE_SUFFIXES, main

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    cases = hostile_uploads(inputs, valid=False)
    skipped = {name for name, (path, _) in cases.items() if path.suffix not in IMAGE_SUFFIXES}  # drawing.svg
    (inputs / "good.png").write_bytes(encode(disc_rgba(), "PNG"))
    (inputs / "folder.png").mkdir()  # a folder with an image name: skipped
    (inputs / "notes.txt").write_text("not an image suffix: skipped")
    os.mkfifo(inputs / "pipe.png")  # would block a reader forever: skipped, never opened
    out = tmp_path / "out"
    args = ["infer", str(inputs), "--out", str(out), "--preset", str(micro_folder), "--steps", "1",
            "--turntable-frames", "2", "--device", "cpu"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert (out / "good" / "gs.ply").stat().st_size > 0
    for name, (path, words) in cases.items():
        line = next((line for line in err.splitlines() if path.name in line), "")
        assert (words in line) if name not in skipped else not line, (name, line)
        assert not (out / path.stem).exists(), name
    assert f"{len(cases) - len(skipped)} input(s) failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["good"]


CHECKPOINT_CASES = {
    # name: (mutation of a saved micro checkpoint, words of the error)
    "truncated UNet safetensors": (lambda d: truncate(d / "unet" / "model.safetensors"), "truncated or corrupt"),
    "reconstructor with wrong shapes": (lambda d: wrong_shapes(d / "reconstructor" / "model.safetensors"),
                                        "mismatched shapes"),
    "pickle named model.safetensors": (lambda d: (d / "unet" / "model.safetensors").write_bytes(
        pickle.dumps({"weight": [0.0]}, protocol=4)), "never unpickles"),
    "torch.save zip named model.safetensors": (lambda d: torch_save(d / "reconstructor" / "model.safetensors"),
                                               "never unpickles"),
    "only a .pt beside the config": (lambda d: swap_for_pt(d / "unet"), "weights file not found"),
    "unknown config field": (lambda d: (d / "pipeline.json").write_text('{"exec": "import os"}'), "unknown"),
    "truncated VAE safetensors": (lambda d: truncate(d / "vae" / "diffusion_pytorch_model.safetensors"),
                                  "diffusion_pytorch_model.safetensors"),
    "VAE as a pickle .bin only": (lambda d: swap_for_bin(d / "vae", "diffusion_pytorch_model"),
                                  "no file named diffusion_pytorch_model.safetensors"),
    "image encoder pickle named .safetensors": (lambda d: (d / "image_encoder" / "model.safetensors").write_bytes(
        pickle.dumps({"weight": [0.0]}, protocol=4)), "header"),
    "pipeline.json not JSON": (lambda d: (d / "pipeline.json").write_text("{not json"), "JSONDecodeError"),
}


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def wrong_shapes(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    key = sorted(state)[0]
    state[key] = torch.zeros(*(s + 1 for s in state[key].shape))
    save_file(state, str(path))


def torch_save(path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2)}, buffer)
    path.write_bytes(buffer.getvalue())


def swap_for_pt(folder: Path) -> None:
    torch_save(folder / "model.pt")
    (folder / "model.safetensors").unlink()


def swap_for_bin(folder: Path, stem: str) -> None:
    torch_save(folder / f"{stem}.bin")
    (folder / f"{stem}.safetensors").unlink()


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_broken_checkpoint_folders_are_refused_and_never_unpickled(case, micro_folder, tmp_path, monkeypatch):
    from gen3d.demo import ModelManager
    from gen3d.pipeline import Gen3DPipeline
    from gen3d.weights import WeightsError

    mutate, words = CHECKPOINT_CASES[case]
    folder = shutil.copytree(micro_folder, tmp_path / "ckpt")
    mutate(folder)
    unpickled = []

    def refuse(*args, **kwargs):
        unpickled.append(args[:1])
        raise AssertionError("something tried to unpickle")

    for target in ("pickle.load", "pickle.loads", "torch.load", "torch.serialization.load"):
        monkeypatch.setattr(target, refuse)
    manager = ModelManager(device="cpu")  # the app's path: --preset FOLDER
    with pytest.raises(WeightsError, match=f"could not load .*{re.escape(words)}") as error:
        manager.get(str(folder))
    assert "Load failed" in manager.status() and manager.pipe is None, str(error.value)
    with pytest.raises(WeightsError, match=re.escape(words)):  # the CLI's path
        Gen3DPipeline.from_pretrained(folder)
    assert not unpickled

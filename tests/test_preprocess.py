"""Preprocessing on the real photos in ../shared/images, every upload format, bad inputs and the fallback.

Background removal uses the border-colour heuristic (fast, no model) except in the tests marked
needs_u2netp, which run rembg with the local u2netp model from .ci/fetch_u2netp.sh.
"""

import importlib.util
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import IMAGES, REPO
from gen3d import preprocess as pp
from gen3d.preprocess import (
    AVATAR_BORDER_RATIO,
    HEURISTIC_LABEL,
    MAX_SIDE,
    OBJECT_BORDER_RATIO,
    InvalidImageError,
    background_remover,
    decode_image,
    heuristic_alpha,
    preprocess,
    to_model_space,
)

U2NET_DIR = REPO / ".cache" / "u2net"
needs_u2netp = pytest.mark.skipif(
    not (U2NET_DIR / "u2netp.onnx").is_file() or importlib.util.find_spec("onnxruntime") is None,
    reason="rembg test needs .cache/u2net/u2netp.onnx (run .ci/fetch_u2netp.sh) and onnxruntime",
)
HEURISTIC = background_remover("heuristic")
OBJECTS = [f"objects/object_{i}.png" for i in range(6)]
RGB_PEOPLE = ["people/person_02.png", "people/person_05.png"]  # plain light backgrounds


def photo(name: str) -> str:
    path = IMAGES / name
    if not path.is_file():
        pytest.skip(f"{path} not available (../shared missing)")
    return str(path)


def small(name: str, side: int = 256) -> Image.Image:
    """A real photo reduced so that format tests stay fast."""
    im = Image.open(photo(name))
    im.thumbnail((side, side))
    return im


def mask_box(result) -> tuple[int, int, float, float]:
    """(height, width, centre row, centre column) of the mask > 0 bounding box (recentring boxes alpha > 0)."""
    rows, cols = np.nonzero(result.mask[0, 0].numpy() > 0)
    return (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1,
            (rows.max() + rows.min() + 1) / 2, (cols.max() + cols.min() + 1) / 2)


def check_result(result, border_ratio: float | None = None) -> None:
    image = result.image
    assert image.shape == (1, 3, 256, 256) and image.dtype == torch.float32
    assert result.mask.shape == (1, 1, 256, 256)
    assert 0.0 <= image.min() and image.max() <= 1.0
    for corner in (image[..., :8, :8], image[..., :8, -8:], image[..., -8:, :8], image[..., -8:, -8:]):
        assert corner.min() > 0.99, "corners must be white background"
    assert result.rgba.dtype == np.uint8 and result.rgba.shape[-1] == 4
    assert result.rgba.shape[0] == result.rgba.shape[1]
    if border_ratio is not None:
        height, width, row, col = mask_box(result)
        side = result.rgba.shape[0]
        expected = int(side * (1 - border_ratio)) * 256 / side  # longer side of the recentred box
        assert abs(max(height, width) - expected) <= 2.5, (height, width, expected)
        assert abs(row - 128) <= 2 and abs(col - 128) <= 2, (row, col)
        assert f"recentred with border ratio {border_ratio:g}" in result.steps


# ------------------------------------------------------------------------------------- real photos
@pytest.mark.parametrize("name", OBJECTS)
def test_objects_rgba(name):
    result = preprocess(photo(name), border_ratio=OBJECT_BORDER_RATIO)
    check_result(result, OBJECT_BORDER_RATIO)
    assert result.mask_source == "alpha channel" and "alpha channel used as mask" in result.steps
    assert "resized 1024x1024 -> 256x256 (bilinear)" in result.steps
    assert result.fallback_reason is None


def test_person_rgba_avatar_preset():
    result = preprocess(photo("people/person_01.png"), border_ratio=AVATAR_BORDER_RATIO)
    check_result(result, AVATAR_BORDER_RATIO)
    height, width, _, _ = mask_box(result)
    assert height > width  # a standing person


@pytest.mark.parametrize("name", RGB_PEOPLE)
def test_rgb_people_background_removed(name):
    result = preprocess(photo(name), border_ratio=AVATAR_BORDER_RATIO, remover=HEURISTIC)
    check_result(result, AVATAR_BORDER_RATIO)
    assert f"background removed with {HEURISTIC_LABEL}" in result.steps
    centre = result.image[0, :, 96:160, 120:136]
    assert centre.mean() < 0.9, "the person occupies the middle"


def test_official_rule_does_not_recentre_rgba():
    path = photo("objects/object_0.png")
    official = preprocess(path, recenter=None)
    assert not any(step.startswith("recentred") for step in official.steps)
    rows, cols = np.nonzero(np.asarray(Image.open(path))[..., 3] > 127)
    height, width, _, _ = mask_box(official)
    assert abs(width - (cols.max() - cols.min() + 1) / 4) <= 2 and abs(height - (rows.max() - rows.min() + 1) / 4) <= 2
    # Official arithmetic: composite at full size, bilinear without antialiasing.
    rgba = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)[None].float() / 255
    expected = rgba[:, :3] * rgba[:, 3:] + 1 - rgba[:, 3:]
    expected = torch.nn.functional.interpolate(expected, size=(256, 256), mode="bilinear", align_corners=False)
    torch.testing.assert_close(official.image, expected, atol=1e-6, rtol=0)  # same ops, float32 rounding only


def test_non_square_not_recentred_is_padded_not_stretched():
    result = preprocess(photo("people/person_02.png"), recenter=False, remover=HEURISTIC)
    check_result(result)
    assert result.rgba.shape == (940, 940, 4)
    assert "not recentred; padded 720x940 to a square" in result.steps


def test_to_model_space():
    x = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(to_model_space(x), torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(pp.from_model_space(to_model_space(x)), x)


def test_outputs_save_as_png(tmp_path):
    result = preprocess(photo("objects/object_1.png"))
    out = tmp_path / "input_0.png"
    Image.fromarray((result.image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(out)
    Image.fromarray(result.rgba).save(tmp_path / "rgba.png")
    reread = torch.from_numpy(np.array(Image.open(out))).permute(2, 0, 1)[None].float() / 255
    torch.testing.assert_close(reread, result.image, atol=0.5 / 255 + 1e-6, rtol=0)  # 8-bit quantisation
    assert np.array_equal(np.asarray(Image.open(tmp_path / "rgba.png")), result.rgba)


# ------------------------------------------------------------------------------ input kinds/formats
def test_path_bytes_pil_and_array_agree():
    path = photo("objects/object_3.png")
    reference = preprocess(path)
    with open(path, "rb") as f:
        data = f.read()
    rgba = np.asarray(Image.open(path))
    for source in (str(path), data, Image.open(path), rgba):
        assert torch.equal(preprocess(source).image, reference.image)
    floats = preprocess(rgba.astype(np.float32) / 255)
    torch.testing.assert_close(floats.image, reference.image, atol=1e-6, rtol=0)
    assert "converted float array to 8-bit" in floats.steps


def test_exif_rotated_jpeg(tmp_path):
    upright = np.asarray(small("people/person_02.png").convert("RGB"))  # 196x256 (W x H)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display = rotate 90° clockwise
    path = tmp_path / "rotated.jpg"
    Image.fromarray(upright).save(path, quality=95, exif=exif.tobytes())
    decoded, steps = decode_image(path)
    assert "EXIF rotation applied (orientation 6)" in steps
    clockwise = np.rot90(upright, k=-1)
    assert decoded.shape == clockwise.shape
    error = np.abs(decoded.astype(float) - clockwise).mean()
    assert error < 3 and error < np.abs(decoded.astype(float) - np.rot90(upright, k=1)).mean() / 3
    check_result(preprocess(path, border_ratio=AVATAR_BORDER_RATIO, remover=HEURISTIC), AVATAR_BORDER_RATIO)


def _png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG (colour type 0, 2, 4 or 6) from a uint16 [H, W, C] array; Pillow cannot write these."""
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[array.shape[-1]]
    height, width = array.shape[:2]
    raw = b"".join(b"\x00" + array[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _object_variants(tmp_path) -> dict[str, tuple[object, str]]:
    """name -> (file, expected report step), all made from a real RGBA object photo."""
    rgba_im = small("objects/object_0.png")
    rgba = np.asarray(rgba_im)
    on_white = Image.fromarray(np.rint(rgba[..., :3] * (rgba[..., 3:] / 255) + 255 - rgba[..., 3:]).astype(np.uint8))
    palette = on_white.quantize(255)
    indices = np.asarray(palette).copy()
    indices[rgba[..., 3] < 128] = 255
    palette_t = Image.fromarray(indices, "P")
    palette_t.putpalette(palette.getpalette() + [0, 0, 0])  # 256 entries, the last one transparent
    palette_t.save(tmp_path / "palette.png", transparency=255)
    rgba_im.convert("LA").save(tmp_path / "la.png")
    rgba_im.save(tmp_path / "lossless.webp", lossless=True)
    rgba_im.save(tmp_path / "lossy.webp", quality=80)
    (tmp_path / "rgba16.png").write_bytes(_png16(rgba.astype(np.uint16) * 257))
    (tmp_path / "la16.png").write_bytes(_png16(np.asarray(rgba_im.convert("LA")).astype(np.uint16) * 257))
    return {
        "palette+transparency": (tmp_path / "palette.png", "converted palette to RGBA"),
        "LA": (tmp_path / "la.png", "converted greyscale+alpha to RGBA"),
        "WebP lossless": (tmp_path / "lossless.webp", "alpha channel used as mask"),
        "WebP lossy": (tmp_path / "lossy.webp", "alpha channel used as mask"),
        "16-bit RGBA": (tmp_path / "rgba16.png", "converted 16-bit to 8-bit"),
        "16-bit LA": (tmp_path / "la16.png", "converted 16-bit to 8-bit"),
    }


def test_formats_with_alpha(tmp_path):
    alpha = np.asarray(small("objects/object_0.png"))[..., 3]
    for name, (path, step) in _object_variants(tmp_path).items():
        result = preprocess(path, remover=HEURISTIC)
        check_result(result, OBJECT_BORDER_RATIO)
        assert step in result.steps, (name, result.steps)
        decoded, _ = decode_image(path)
        assert decoded.shape == (*alpha.shape, 4), name
        assert np.mean(np.abs((decoded[..., 3] > 127).astype(int) - (alpha > 127))) < 0.01, name


def _person_variants(tmp_path) -> dict[str, tuple[object, str]]:
    person = small("people/person_02.png").convert("RGB")
    grey = person.convert("L")
    grey.save(tmp_path / "grey.png")
    Image.fromarray(np.asarray(grey).astype(np.uint16) * 257).save(tmp_path / "grey16.png")  # mode I;16
    (tmp_path / "rgb16.png").write_bytes(_png16(np.asarray(person).astype(np.uint16) * 257))
    person.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    person.save(tmp_path / "photo.webp", quality=90)
    return {
        "greyscale": (tmp_path / "grey.png", "converted greyscale to RGB"),
        "16-bit greyscale": (tmp_path / "grey16.png", "converted 16-bit to 8-bit"),
        "16-bit RGB": (tmp_path / "rgb16.png", "converted 16-bit to 8-bit"),
        "CMYK JPEG": (tmp_path / "cmyk.jpg", "converted CMYK to RGB"),
        "WebP": (tmp_path / "photo.webp", f"background removed with {HEURISTIC_LABEL}"),
    }


def test_formats_without_alpha(tmp_path):
    person = np.asarray(small("people/person_02.png").convert("RGB")).astype(float)
    for name, (path, step) in _person_variants(tmp_path).items():
        result = preprocess(path, border_ratio=AVATAR_BORDER_RATIO, remover=HEURISTIC)
        check_result(result, AVATAR_BORDER_RATIO)
        assert step in result.steps, (name, result.steps)
        decoded, _ = decode_image(path)
        reference = person.mean(-1, keepdims=True) if "grey" in name else person
        assert np.abs(decoded - reference).mean() < 4, name  # lossy formats and the grey conversion


def test_16bit_is_reduced_exactly(tmp_path):
    person = np.asarray(small("people/person_02.png").convert("RGB"))
    (tmp_path / "rgb16.png").write_bytes(_png16(person.astype(np.uint16) * 257))
    decoded, _ = decode_image(tmp_path / "rgb16.png")
    assert np.array_equal(decoded, person)
    decoded, steps = decode_image(person.astype(np.uint16) * 257)
    assert np.array_equal(decoded, person) and "converted 16-bit to 8-bit" in steps


def test_animated_gif_uses_first_frame(tmp_path):
    rgba = np.asarray(small("objects/object_2.png")).astype(float)
    first = Image.fromarray(np.rint(rgba[..., :3] * rgba[..., 3:] / 255 + 255 - rgba[..., 3:]).astype(np.uint8))
    others = [Image.new("RGB", first.size, colour) for colour in ((0, 0, 0), (255, 0, 0))]
    first.save(tmp_path / "anim.gif", save_all=True, append_images=others, duration=100, loop=0)
    result = preprocess(tmp_path / "anim.gif", remover=HEURISTIC)
    check_result(result, OBJECT_BORDER_RATIO)
    assert "animated image (3 frames): used the first frame" in result.steps
    decoded, _ = decode_image(tmp_path / "anim.gif")
    assert np.abs(decoded.astype(float) - np.asarray(first)).mean() < 6  # GIF palette quantisation


def test_large_input_is_reduced_before_processing():
    big = np.zeros((2400, 3000, 4), np.uint8)
    big[600:1800, 1000:2000] = (200, 30, 30, 255)
    result = preprocess(big)
    check_result(result, OBJECT_BORDER_RATIO)
    assert "reduced 3000x2400 -> 2048x1638 (area) before processing" in result.steps


# ------------------------------------------------------------------------------------- bad inputs
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but holds one tiny row: must be refused undecoded."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header))
            + struct.pack(">I", len(data)) + b"IDAT" + data + struct.pack(">I", zlib.crc32(b"IDAT" + data)))


def _bad_inputs(tmp_path) -> dict[str, tuple[object, str]]:
    with open(photo("objects/object_4.png"), "rb") as f:
        png = f.read()
    files = {
        "random.png": np.random.default_rng(0).bytes(4096),
        "mesh.png": b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\nend_header\n" + bytes(4),
        "truncated.png": png[: len(png) // 2],
        "empty.png": b"",
        "drawing.svg": b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>',
        "huge.png": _png_header_only(MAX_SIDE + 1, MAX_SIDE + 1),
        "bomb.png": _png_header_only(40000, 40000),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    transparent = np.zeros((64, 64, 4), np.uint8)
    return {
        "random bytes": (tmp_path / "random.png", "not an image"),
        "a .ply renamed .png": (tmp_path / "mesh.png", "PLY"),
        "truncated PNG": (tmp_path / "truncated.png", "truncated or corrupt"),
        "zero-byte file": (tmp_path / "empty.png", "zero-byte file"),
        "zero bytes": (b"", "zero bytes"),
        "SVG": (tmp_path / "drawing.svg", "SVG"),
        "missing file": (tmp_path / "missing.png", "no such file"),
        "header too large": (tmp_path / "huge.png", "too large"),
        "decompression bomb": (tmp_path / "bomb.png", "decompression bomb"),
        "too small": (np.full((4, 4, 3), 128, np.uint8), "too small"),
        "empty array": (np.zeros((0, 0, 3), np.uint8), "empty image"),
        "fully transparent": (transparent, "fully transparent"),
        "flat colour": (np.full((64, 64, 3), 200, np.uint8), "flat colour"),
        "channels first": (np.zeros((3, 64, 64), np.uint8), "channels last"),
        "float out of range": (np.full((64, 64, 3), 2.0), "[0, 1]"),
        "wrong type": (12345, "unsupported input type int"),
    }


def test_bad_inputs_raise_named_errors(tmp_path):
    for name, (source, words) in _bad_inputs(tmp_path).items():
        start = time.perf_counter()
        with pytest.raises(InvalidImageError) as info:
            preprocess(source, remover=HEURISTIC)
        assert words in str(info.value), (name, str(info.value))
        assert time.perf_counter() - start < 2.0, f"{name}: refused without decoding"


def test_pil_bomb_warning_becomes_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 1000: PIL warns, we refuse
    with open(photo("objects/object_4.png"), "rb") as f:
        data = f.read()
    with pytest.raises(InvalidImageError, match="decompression bomb"):
        preprocess(data)


def test_remover_finding_nothing_is_an_error():
    with pytest.raises(InvalidImageError, match="found no object"):
        preprocess(photo("people/person_05.png"), remover=lambda rgb: np.zeros(rgb.shape[:2], np.uint8))


# ----------------------------------------------------------------------- removers and the fallback
def test_injected_remover_is_used_and_named():
    def box_remover(rgb):  # float alpha in [0, 1]
        alpha = np.zeros(rgb.shape[:2], np.float32)
        alpha[100:250, 200:500] = 1.0
        return alpha

    result = preprocess(photo("people/person_02.png"), remover=box_remover)
    assert "background removed with box_remover" in result.steps and result.mask_source == "box_remover"
    height, width, _, _ = mask_box(result)
    assert width > height  # the box, not the person


def test_offline_without_model_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    remover = background_remover("auto", model_dir=tmp_path)
    assert remover.label == HEURISTIC_LABEL
    assert "no local rembg model" in remover.fallback_reason and "HF_HUB_OFFLINE=1" in remover.fallback_reason
    result = preprocess(photo("people/person_05.png"), border_ratio=AVATAR_BORDER_RATIO, remover=remover)
    check_result(result, AVATAR_BORDER_RATIO)
    assert result.fallback_reason == remover.fallback_reason
    assert any(step.startswith(f"fell back to {HEURISTIC_LABEL}") and "offline" in step for step in result.steps)


def test_rembg_exit_falls_back(tmp_path, monkeypatch):
    (tmp_path / "u2netp.onnx").write_bytes(b"not used")
    monkeypatch.setattr(pp, "_SESSIONS", {})
    monkeypatch.setattr(pp, "_SESSION_ERRORS", {})
    calls = []

    def exiting_import():
        calls.append(1)
        raise SystemExit(1)  # what `import rembg` does without onnxruntime

    monkeypatch.setattr(pp, "_import_rembg", exiting_import)
    remover = background_remover("u2netp", model_dir=tmp_path)
    assert remover.label == "rembg u2netp" and remover.fallback_reason is None
    for _ in range(2):
        result = preprocess(photo("people/person_02.png"), border_ratio=AVATAR_BORDER_RATIO, remover=remover)
        check_result(result, AVATAR_BORDER_RATIO)
        assert result.mask_source == HEURISTIC_LABEL and "sys.exit(1)" in result.fallback_reason
        assert any(step.startswith(f"fell back to {HEURISTIC_LABEL}") for step in result.steps)
    assert len(calls) == 1, "a failed session is remembered, not retried on every upload"


def test_one_session_per_model_under_threads(monkeypatch):
    monkeypatch.setattr(pp, "_SESSIONS", {})
    monkeypatch.setattr(pp, "_SESSION_ERRORS", {})
    created = []

    def slow_create(name, path):
        time.sleep(0.05)
        created.append(name)
        return object()

    monkeypatch.setattr(pp, "_create_session", slow_create)
    sessions = []
    threads = [threading.Thread(target=lambda: sessions.append(pp._rembg_session("u2netp", None))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert created == ["u2netp"] and len(sessions) == 4 and all(s is sessions[0] for s in sessions)


def test_model_lookup_layouts(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    assert pp.find_local_model("u2net") is None
    nested = tmp_path / "models" / "u2netp" / "u2netp.onnx"
    nested.parent.mkdir(parents=True)
    nested.write_bytes(b"x")
    assert pp.find_local_model("u2netp") == nested
    assert background_remover("auto").label == "rembg u2netp"
    (tmp_path / "u2net.onnx").write_bytes(b"x")
    assert background_remover("auto").label == "rembg u2net"  # the official model is preferred


def test_heuristic_on_known_mask():
    rgba = np.asarray(small("objects/object_3.png", 384)).astype(float)
    rgb = np.rint(rgba[..., :3] * rgba[..., 3:] / 255 + 235 * (1 - rgba[..., 3:] / 255)).astype(np.uint8)
    found, truth = heuristic_alpha(rgb) > 127, rgba[..., 3] > 127
    assert (found & truth).sum() / (found | truth).sum() > 0.95  # IoU on a plain light-grey background


@needs_u2netp
def test_rembg_u2netp_on_real_photos(monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(U2NET_DIR))
    remover = background_remover("auto")
    assert remover.label == "rembg u2netp"
    path = photo("people/person_02.png")
    result = preprocess(path, border_ratio=AVATAR_BORDER_RATIO, remover=remover)
    check_result(result, AVATAR_BORDER_RATIO)
    assert "background removed with rembg u2netp" in result.steps and result.fallback_reason is None
    heuristic = preprocess(path, border_ratio=AVATAR_BORDER_RATIO, remover=HEURISTIC)
    a, b = result.mask[0, 0] > 0.5, heuristic.mask[0, 0] > 0.5
    assert (a & b).sum() / (a | b).sum() > 0.9  # plain background: model and heuristic agree
    assert pp._rembg_session("u2netp", None) is pp._rembg_session("u2netp", None)  # one cached session

    # A studio photo (grey, shaded floor, white side bars): everything but the person turns white.
    photo_result = preprocess(photo("people/person_07.jpg"), border_ratio=AVATAR_BORDER_RATIO, remover=remover)
    check_result(photo_result, AVATAR_BORDER_RATIO)
    assert photo_result.image[..., :, 200:].min() > 0.95 and photo_result.image[..., :, :56].min() > 0.95

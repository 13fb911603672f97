"""Input preprocessing: an uploaded image -> recentred RGBA -> the model input (spec section 10).

    decode_image   path / bytes / PIL image / numpy array -> [H, W, 3|4] uint8 (+ what was done)
    background     alpha channel if the image has one, else a BackgroundRemover (rembg, or a heuristic)
    recenter_rgba  alpha bounding box scaled to int(S·(1 − border_ratio)) on its longer side, centred on a
                   transparent S×S canvas, S = max(H, W) (kiui.op.recenter)
    composite      rgb·α + (1 − α) on white, then bilinear resize to 256×256 (align_corners=False)

Output convention: ``PreprocessResult.image`` is [1, 3, 256, 256] float32 in [0, 1], channels first;
``to_model_space`` maps it to the [-1, 1] range that CLIP, the VAE and the sampler take.

Differences from the official script, on purpose:
* ``recenter=True`` (default) recentres every input, RGBA included, so arbitrary uploads get the framing
  the model expects (Human-3Diffusion does the same). ``recenter=None`` is the official Gen-3Diffusion
  rule (recentre only images whose background we removed); ``recenter=False`` never recentres.
  Non-square images that are not recentred are padded to a square instead of stretched.
* rembg's mask is used as alpha on the original colours (the official ``rembg.remove`` cut-out also
  multiplies the colours by the mask, which darkens soft edges once more when composited).
* Inputs larger than WORK_SIDE are first reduced with area averaging, which bounds memory; inputs up to
  WORK_SIDE follow the official arithmetic (no antialiasing in the final resize, ``antialias=False``).
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError
from torch import Tensor

OBJECT_BORDER_RATIO = 0.45  # official object preset
AVATAR_BORDER_RATIO = 0.227  # official avatar (people) preset
MODEL_SIZE = 256
MIN_SIDE = 8  # px, smallest accepted side
MAX_SIDE = 8192  # px, largest accepted side, checked from the header before decoding
WORK_SIDE = 2048  # larger inputs are area-reduced to this before processing
AUTO_MODELS = ("u2net", "u2netp", "isnet-general-use", "silueta")  # "auto" tries these local files in order
OFFLINE_ENV_VARS = ("GEN3D_OFFLINE", "HF_HUB_OFFLINE")
HEURISTIC_LABEL = "the border-colour heuristic"

ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


class InvalidImageError(ValueError):
    """The input cannot become a model input; the message names the problem."""


class BackgroundRemovalUnavailable(RuntimeError):
    """A background remover cannot run (rembg missing or broken, model file missing, download failed)."""


# ------------------------------------------------------------------------------------------- results
@dataclass
class PreprocessResult:
    image: Tensor  # [1, 3, 256, 256] float32 in [0, 1], composited on white
    mask: Tensor  # [1, 1, 256, 256] float32 in [0, 1], the alpha resized like the image
    rgba: np.ndarray  # [S, S, 4] uint8, the recentred cut-out before compositing (for display)
    steps: list[str] = field(default_factory=list)  # human-readable, in order
    mask_source: str = ""  # "alpha channel", "rembg u2netp", HEURISTIC_LABEL or a custom label
    fallback_reason: str | None = None  # why the intended background remover was not used

    @property
    def report(self) -> str:
        return "\n".join(self.steps)


def to_model_space(x: Tensor) -> Tensor:
    """[0, 1] images -> [-1, 1] (the range of CLIP/VAE inputs, spec 10.3)."""
    return x * 2 - 1


def from_model_space(x: Tensor) -> Tensor:
    """[-1, 1] images -> [0, 1]."""
    return (x + 1) / 2


# ------------------------------------------------------------------------------------------ decoding
def _check_size(width: int, height: int) -> None:
    if width == 0 or height == 0:
        raise InvalidImageError(f"empty image ({width}x{height} px): nothing to reconstruct")
    if min(width, height) < MIN_SIDE:
        raise InvalidImageError(f"image too small: {width}x{height} px (each side must be at least {MIN_SIDE} px)")
    if max(width, height) > MAX_SIDE:
        raise InvalidImageError(f"image too large: {width}x{height} px (each side must be at most {MAX_SIDE} px)")


@contextmanager
def _decoding() -> Iterator[None]:
    """Turns PIL's decoding failures, and its decompression-bomb warning, into InvalidImageError.
    PIL's own guard (Image.MAX_IMAGE_PIXELS) is left as configured; MAX_SIDE is the stricter limit here.
    (catch_warnings swaps process-wide filters; a concurrent decode may briefly share the "error" filter.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except InvalidImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InvalidImageError(f"image too large (possible decompression bomb): {exc}") from exc
        except UnidentifiedImageError as exc:
            raise InvalidImageError("not an image: the file format is not recognised (use PNG, JPEG or WebP)") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InvalidImageError(f"truncated or corrupt image file: {exc}") from exc


def _sniff_unsupported(head: bytes) -> str | None:
    """Names well-known non-raster formats from the first bytes, for a clearer error."""
    start = head.lstrip()[:256].lower()
    if start.startswith(b"<svg") or (start.startswith(b"<?xml") and b"<svg" in head.lower()):
        return "SVG (vector graphics)"
    if head.startswith((b"ply\n", b"ply\r\n")):
        return "PLY (a 3D point cloud)"
    if head.startswith(b"%PDF"):
        return "PDF"
    return None


def _open(source: str | os.PathLike | bytes) -> Image.Image:
    """Opens lazily (header only) and checks the declared size before anything is decoded."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise InvalidImageError("empty input: zero bytes")
        head, stream = data[:1024], io.BytesIO(data)
    else:
        path = Path(source)
        if not path.is_file():
            raise InvalidImageError(f"no such file: {path}")
        if path.stat().st_size == 0:
            raise InvalidImageError(f"zero-byte file: {path.name}")
        with open(path, "rb") as f:
            head = f.read(1024)
        stream = path
    kind = _sniff_unsupported(head) or ("SVG (vector graphics)" if str(stream).lower().endswith(".svg") else None)
    if kind is not None:
        raise InvalidImageError(f"{kind} files are not supported: upload a PNG, JPEG or WebP image")
    with _decoding():
        im = Image.open(stream)
        try:
            _check_size(*im.size)
        except InvalidImageError:
            im.close()
            raise
    return im


_MODE_NAMES = {"1": "1-bit", "L": "greyscale", "LA": "greyscale+alpha", "P": "palette", "PA": "palette+alpha",
               "CMYK": "CMYK", "YCbCr": "YCbCr", "LAB": "Lab", "HSV": "HSV"}


def _pil_to_array(im: Image.Image, steps: list[str]) -> np.ndarray:
    """Loaded PIL image of any mode -> [H, W, 3|4] uint8."""
    if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit greyscale
        grey = np.asarray(im).astype(np.float64)
        if im.mode == "F" and grey.max() <= 1.0:
            grey = grey * 255.0
            steps.append("converted float greyscale to 8-bit")
        elif im.mode != "F":
            grey = grey / 257.0
            if "converted 16-bit to 8-bit" not in steps:  # PNG's 16-bit flag may have been seen already
                steps.append("converted 16-bit to 8-bit")
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    target = "RGBA" if im.has_transparency_data else "RGB"
    if im.mode != target:
        steps.append(f"converted {_MODE_NAMES.get(im.mode, im.mode)} to {target}")
        im = im.convert(target)
    return np.asarray(im)


def _array_to_uint8(arr: np.ndarray, steps: list[str]) -> np.ndarray:
    """numpy input ([H, W] or [H, W, 1|2|3|4]; uint8, uint16, bool or float in [0, 1]) -> [H, W, 3|4] uint8."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise InvalidImageError(f"array must have shape [H, W] or [H, W, 1|2|3|4] (channels last), got {arr.shape}")
    _check_size(arr.shape[1], arr.shape[0])
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == bool:
        out = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        out = np.rint(arr / 257.0).astype(np.uint8)
        steps.append("converted 16-bit to 8-bit")
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise InvalidImageError("float arrays must be finite and in [0, 1]")
        out = np.rint(arr * 255.0).astype(np.uint8)
        steps.append("converted float array to 8-bit")
    else:
        raise InvalidImageError(f"unsupported array dtype {arr.dtype} (use uint8, uint16, bool or float in [0, 1])")
    if out.shape[-1] in (1, 2):  # grey / grey+alpha
        out = np.concatenate([np.repeat(out[..., :1], 3, axis=-1), out[..., 1:]], axis=-1)
    return np.ascontiguousarray(out)


def decode_image(source: ImageSource) -> tuple[np.ndarray, list[str]]:
    """Any accepted input -> ([H, W, 3] RGB or [H, W, 4] RGBA uint8, steps). Raises InvalidImageError."""
    steps: list[str] = []
    if isinstance(source, np.ndarray):
        steps.append(f"numpy array {source.shape} {source.dtype}")
        return _array_to_uint8(source, steps), steps
    if isinstance(source, Image.Image):
        _check_size(*source.size)
        return _decode_pil(source, steps)
    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        with _open(source) as im:
            return _decode_pil(im, steps)
    raise InvalidImageError(
        f"unsupported input type {type(source).__name__}: expected a path, bytes, a PIL image or a numpy array")


def _decode_pil(im: Image.Image, steps: list[str]) -> tuple[np.ndarray, list[str]]:
    steps.append(f"decoded {im.format or 'image'} {im.width}x{im.height} {im.mode}")
    with _decoding():
        if getattr(im, "is_animated", False):
            steps.append(f"animated image ({im.n_frames} frames): used the first frame")
            im.seek(0)
        if any(";16" in str(tile[3]) for tile in getattr(im, "tile", None) or []):
            steps.append("converted 16-bit to 8-bit")  # PIL reduces 16-bit RGB(A)/LA PNGs while decoding
        im.load()
        orientation = im.getexif().get(0x0112, 1)
        if orientation not in (1, None):
            im = ImageOps.exif_transpose(im)
            steps.append(f"EXIF rotation applied (orientation {orientation})")
        arr = _pil_to_array(im, steps)
    return arr, steps


# -------------------------------------------------------------------------------- background removal
@dataclass(frozen=True)
class BackgroundRemover:
    """Callable: [H, W, 3] uint8 RGB -> [H, W] alpha (uint8 0..255, or float in [0, 1])."""

    fn: Callable[[np.ndarray], np.ndarray]
    label: str  # shown in the report, e.g. "rembg u2netp"
    fallback_reason: str | None = None  # set when this remover stands in for an unavailable model

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.fn(rgb)


def _offline_reason() -> str | None:
    for var in OFFLINE_ENV_VARS:
        if os.environ.get(var, "").strip().lower() not in ("", "0", "false", "no", "off"):
            return f"{var}={os.environ[var]}"
    return None


def model_search_dirs() -> list[Path]:
    """Where rembg keeps models: $U2NET_HOME if set, else $REMBG_HOME (or ~/.rembg) and the legacy ~/.u2net."""
    if os.environ.get("U2NET_HOME"):
        return [Path(os.environ["U2NET_HOME"]).expanduser()]
    xdg = os.environ.get("XDG_DATA_HOME")
    default_home = Path(xdg) / "rembg" if xdg else Path("~/.rembg")
    legacy = (Path(xdg) if xdg else Path("~")) / ".u2net"
    return [Path(os.environ.get("REMBG_HOME") or default_home).expanduser(), legacy.expanduser()]


def find_local_model(name: str, model_dir: str | os.PathLike | None = None) -> Path | None:
    """First existing <dir>/<name>.onnx or <dir>/models/<name>/<name>.onnx, without importing rembg."""
    dirs = [Path(model_dir)] if model_dir is not None else model_search_dirs()
    for root in dirs:
        for path in (root / f"{name}.onnx", root / "models" / name / f"{name}.onnx"):
            if path.is_file() and path.stat().st_size > 0:
                return path
    return None


# Process-wide on purpose: a rembg session holds the ONNX model (one per model name, reused by every upload).
_SESSIONS: dict[str, object] = {}  # rembg model name -> session
_SESSION_ERRORS: dict[str, str] = {}  # model name -> why its session could not be created (not retried)
_SESSIONS_LOCK = threading.Lock()


def _import_rembg():
    import rembg  # slow the first time (pymatting compiles with numba); calls sys.exit without onnxruntime

    return rembg


def _create_session(name: str, path: Path | None):
    try:
        rembg = _import_rembg()
        from rembg.sessions import sessions_class
    except SystemExit as exc:
        raise BackgroundRemovalUnavailable(f"rembg exited on import (sys.exit({exc.code}); is onnxruntime installed?)") from None
    except ImportError as exc:
        raise BackgroundRemovalUnavailable(f"rembg is not importable: {exc}") from exc
    session_class = next((c for c in sessions_class if c.name() == name), None)
    if session_class is None:
        raise BackgroundRemovalUnavailable(f"rembg has no model named {name!r}")
    try:
        if path is None:
            return rembg.new_session(name)  # downloads the model; fails at once without a network
        import onnxruntime as ort

        # Pin the model file we found so that rembg never tries to download it.
        pinned = type(session_class.__name__, (session_class,), {"download_models": classmethod(lambda cls, *a, **k: str(path))})
        return pinned(name, ort.SessionOptions())
    except Exception as exc:  # download/network/ONNX errors come in many types; all mean "no model"
        where = "download" if path is None else f"load {path}"
        raise BackgroundRemovalUnavailable(f"could not {where} for rembg {name}: {type(exc).__name__}: {exc}") from exc


def _rembg_session(name: str, path: Path | None):
    """One session per model name, created on first use (thread-safe); failures are remembered."""
    with _SESSIONS_LOCK:
        if name in _SESSION_ERRORS:
            raise BackgroundRemovalUnavailable(_SESSION_ERRORS[name])
        if name not in _SESSIONS:
            try:
                _SESSIONS[name] = _create_session(name, path)
            except BackgroundRemovalUnavailable as exc:
                _SESSION_ERRORS[name] = str(exc)
                raise
        return _SESSIONS[name]


@dataclass(frozen=True)
class _RembgModel:
    name: str
    path: Path | None  # None: let rembg download it

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        session = _rembg_session(self.name, self.path)
        mask = _import_rembg().remove(Image.fromarray(rgb), session=session, only_mask=True)
        return np.asarray(mask.convert("L"))


def heuristic_alpha(rgb: np.ndarray) -> np.ndarray:
    """Background removal without a model, for plain backgrounds: [H, W, 3] uint8 -> [H, W] uint8 alpha.

    1. Border colours: colours (16 levels per channel) of a ring 2% of the shorter side wide.
    2. Seeds: the ring and every pixel of its dominant colours (covering 90% of it) are background;
       pixels more than one level from every ring colour are foreground.
    3. A watershed on the colour gradient grows both seed sets until they meet on the strongest edges;
       the largest foreground component is kept and feathered by 1 px.
    Good on plain backgrounds (enclosed holes included); shaded studio backgrounds, or an object the
    colour of its background, give rough masks.
    """
    from skimage import filters, measure, morphology, segmentation

    height, width = rgb.shape[:2]
    ring = np.zeros((height, width), bool)
    k = max(2, round(0.02 * min(height, width)))
    ring[:k], ring[-k:], ring[:, :k], ring[:, -k:] = True, True, True, True
    levels = 16
    quant = (rgb // (256 // levels)).astype(np.int32)
    code = (quant[..., 0] * levels + quant[..., 1]) * levels + quant[..., 2]
    counts = np.bincount(code[ring], minlength=levels**3)
    order = np.argsort(counts)[::-1]
    n_dominant = int(np.searchsorted(np.cumsum(counts[order]), 0.9 * counts.sum())) + 1
    dominant = np.zeros(levels**3, bool)
    dominant[order[:n_dominant]] = True
    present = (counts >= 0.002 * ring.sum()).reshape(levels, levels, levels)
    near_ring = morphology.dilation(present, np.ones((3, 3, 3), bool)).ravel()
    markers = np.zeros((height, width), np.int32)
    markers[morphology.opening(~near_ring[code] & ~ring, morphology.disk(2))] = 2
    markers[ring | dominant[code]] = 1
    gradient = np.max([filters.sobel(rgb[..., c].astype(np.float32) / 255.0) for c in range(3)], axis=0)
    labels = measure.label(segmentation.watershed(gradient, markers) == 2, connectivity=2)
    if labels.max() == 0:
        return np.zeros((height, width), np.uint8)
    largest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    alpha = np.asarray(Image.fromarray(largest.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(1)))
    return np.where(alpha >= 8, alpha, 0).astype(np.uint8)  # no faint tails widening the recentring box


def background_remover(name: str = "auto", *, model_dir: str | os.PathLike | None = None,
                       allow_download: bool | None = None) -> BackgroundRemover:
    """Builds a remover without importing rembg (that happens on first use, once per model name).

    name: "auto" (the first local file of AUTO_MODELS), a rembg model name ("u2netp", ...), or "heuristic".
    The model is looked up locally first (model_search_dirs(), or model_dir). With no local file a download
    is attempted on first use only when allowed (default: unless GEN3D_OFFLINE/HF_HUB_OFFLINE is set);
    otherwise the heuristic is returned with fallback_reason saying why.
    """
    if name == "heuristic":
        return BackgroundRemover(heuristic_alpha, HEURISTIC_LABEL)
    candidates = AUTO_MODELS if name == "auto" else (name,)
    for candidate in candidates:
        path = find_local_model(candidate, model_dir)
        if path is not None:
            return BackgroundRemover(_RembgModel(candidate, path), f"rembg {candidate}")
    offline = _offline_reason()
    if allow_download is None:
        allow_download = offline is None
    if allow_download:
        return BackgroundRemover(_RembgModel(candidates[0], None), f"rembg {candidates[0]}")
    dirs = ", ".join(str(d) for d in ([Path(model_dir)] if model_dir is not None else model_search_dirs()))
    why = f"offline ({offline})" if offline else "downloads disabled"
    reason = f"no local rembg model ({', '.join(candidates)}) in {dirs} and {why}"
    return BackgroundRemover(heuristic_alpha, HEURISTIC_LABEL, fallback_reason=reason)


def _as_alpha(alpha: np.ndarray, shape: tuple[int, int], label: str) -> np.ndarray:
    alpha = np.asarray(alpha)
    if alpha.ndim == 3 and alpha.shape[-1] == 1:
        alpha = alpha[..., 0]
    if alpha.shape != shape:
        raise ValueError(f"background remover {label} returned shape {alpha.shape}, expected {shape}")
    if alpha.dtype != np.uint8:
        alpha = np.rint(np.clip(np.nan_to_num(alpha.astype(np.float32)), 0, 1) * 255).astype(np.uint8)
    return alpha


# --------------------------------------------------------------------------------- geometry / output
def _resize_area(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w, C] uint8 -> [height, width, C] uint8; area averaging when shrinking (cv2 INTER_AREA), bilinear
    when enlarging. Channels are resized separately in float, so colours are not premultiplied."""
    shrink = height <= arr.shape[0] and width <= arr.shape[1]
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    channels = [np.asarray(Image.fromarray(arr[..., c].astype(np.float32), mode="F").resize((width, height), resample))
                for c in range(arr.shape[-1])]
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)


def recenter_rgba(rgba: np.ndarray, border_ratio: float) -> np.ndarray:
    """[H, W, 4] uint8 -> [S, S, 4] uint8, S = max(H, W): the bounding box of alpha > 0, resized so that its
    longer side is int(S·(1 − border_ratio)), centred on a transparent canvas."""
    if rgba.ndim != 3 or rgba.shape[-1] != 4:
        raise ValueError(f"rgba must have shape [H, W, 4], got {rgba.shape}")
    if not 0.0 <= border_ratio < 1.0:
        raise ValueError(f"border_ratio must be in [0, 1), got {border_ratio}")
    size = max(rgba.shape[:2])
    rows, cols = np.nonzero(rgba[..., 3] > 0)
    if rows.size == 0:
        raise InvalidImageError("no foreground: the mask is empty, nothing to reconstruct")
    crop = rgba[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = int(size * (1.0 - border_ratio)) / max(crop.shape[:2])
    height, width = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    out = np.zeros((size, size, 4), np.uint8)
    top, left = (size - height) // 2, (size - width) // 2
    out[top:top + height, left:left + width] = _resize_area(crop, height, width)
    return out


def pad_to_square(rgba: np.ndarray) -> np.ndarray:
    """[H, W, 4] -> [S, S, 4], centred on a transparent canvas (instead of stretching)."""
    height, width = rgba.shape[:2]
    size = max(height, width)
    out = np.zeros((size, size, 4), np.uint8)
    top, left = (size - height) // 2, (size - width) // 2
    out[top:top + height, left:left + width] = rgba
    return out


def composite_and_resize(rgba: np.ndarray, size: int = MODEL_SIZE, antialias: bool = False) -> tuple[Tensor, Tensor]:
    """[S, S, 4] uint8 -> (image [1, 3, size, size] in [0, 1] on white, mask [1, 1, size, size] in [0, 1]).
    Official order: composite rgb·α + (1 − α) at full size, then bilinear resize (align_corners=False)."""
    x = torch.from_numpy(np.ascontiguousarray(rgba)).permute(2, 0, 1)[None].float() / 255.0
    alpha = x[:, 3:]
    image = x[:, :3] * alpha + (1.0 - alpha)
    both = F.interpolate(torch.cat([image, alpha], dim=1), size=(size, size), mode="bilinear",
                         align_corners=False, antialias=antialias)
    both = both.clamp(0.0, 1.0)
    return both[:, :3].contiguous(), both[:, 3:].contiguous()


def _remove_background(rgb: np.ndarray, remover, steps: list[str]) -> tuple[np.ndarray, str, str | None]:
    """rgb [H, W, 3] uint8 -> (alpha [H, W] uint8, mask source, fallback reason); a remover that cannot run
    is replaced by the heuristic, and the report says why."""
    if (rgb == rgb[0, 0]).all():
        raise InvalidImageError("image is a single flat colour: nothing to reconstruct")
    if isinstance(remover, str):
        remover = background_remover(remover)
    elif not isinstance(remover, BackgroundRemover):
        remover = BackgroundRemover(remover, getattr(remover, "__name__", "a custom remover"))
    try:
        alpha = _as_alpha(remover(rgb), rgb.shape[:2], remover.label)
        source, fallback_reason = remover.label, remover.fallback_reason
    except BackgroundRemovalUnavailable as exc:
        alpha = heuristic_alpha(rgb)
        source, fallback_reason = HEURISTIC_LABEL, f"{remover.label} unavailable: {exc}"
    if fallback_reason is None:
        steps.append(f"background removed with {source}")
    else:
        steps.append(f"fell back to {source} for background removal ({fallback_reason})")
    if alpha.max() == 0:
        raise InvalidImageError(f"background removal ({source}) found no object: nothing to reconstruct")
    return alpha, source, fallback_reason


def preprocess(
    source: ImageSource,
    *,
    border_ratio: float = OBJECT_BORDER_RATIO,
    recenter: bool | None = True,
    remover: BackgroundRemover | Callable[[np.ndarray], np.ndarray] | str = "auto",
    size: int = MODEL_SIZE,
    antialias: bool = False,
) -> PreprocessResult:
    """An uploaded image -> PreprocessResult (image [1, 3, size, size] in [0, 1]). Raises InvalidImageError.

    border_ratio: OBJECT_BORDER_RATIO (0.45) for objects, AVATAR_BORDER_RATIO (0.227) for people.
    recenter: True (default) always recentres; None follows the official script (only images whose
        background was removed); False never recentres (non-square images are padded to a square).
    remover: used only for images without a usable alpha channel: a BackgroundRemover, any callable
        RGB uint8 [H, W, 3] -> alpha [H, W], or a name for background_remover().
    antialias: False matches the official F.interpolate; True avoids aliasing on large inputs.
    """
    if not 0.0 <= border_ratio < 1.0:
        raise ValueError(f"border_ratio must be in [0, 1), got {border_ratio}")
    rgb, steps = decode_image(source)
    height, width = rgb.shape[:2]
    if max(height, width) > WORK_SIDE:
        scale = WORK_SIDE / max(height, width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        rgb = _resize_area(rgb, new_h, new_w)
        steps.append(f"reduced {width}x{height} -> {new_w}x{new_h} (area) before processing")
    alpha = rgb[..., 3] if rgb.shape[-1] == 4 else None
    rgb = np.ascontiguousarray(rgb[..., :3])
    if alpha is not None and alpha.max() == 0:
        raise InvalidImageError("image is fully transparent: nothing to reconstruct")
    if alpha is not None and alpha.min() == 255:
        steps.append("alpha channel is fully opaque: ignored")
        alpha = None
    had_alpha, fallback_reason = alpha is not None, None
    if had_alpha:
        mask_source = "alpha channel"
        steps.append("alpha channel used as mask")
    else:
        alpha, mask_source, fallback_reason = _remove_background(rgb, remover, steps)
    rgba = np.concatenate([rgb, alpha[..., None]], axis=-1)
    if recenter or (recenter is None and not had_alpha):
        rgba = recenter_rgba(rgba, border_ratio)
        steps.append(f"recentred with border ratio {border_ratio:g}")
    elif rgba.shape[0] != rgba.shape[1]:
        steps.append(f"not recentred; padded {rgba.shape[1]}x{rgba.shape[0]} to a square")
        rgba = pad_to_square(rgba)
    image, mask = composite_and_resize(rgba, size, antialias)
    steps.append("composited on white")
    if rgba.shape[0] != size:
        side = rgba.shape[0]
        steps.append(f"resized {side}x{side} -> {size}x{size} (bilinear{', antialiased' if antialias else ''})")
    return PreprocessResult(image=image, mask=mask, rgba=rgba, steps=steps, mask_source=mask_source,
                            fallback_reason=fallback_reason)

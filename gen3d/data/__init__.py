"""Training data: procedural textured objects and people, and the multi-view dataset folder format.

    spec = sample_object(seed, domain="object")          # deterministic per seed ("object" | "avatar")
    cameras, roles = object_cameras(spec, size=128)       # 4 targets (target 0 = input) + 8 novel views
    views = render_object(spec, cameras)                  # rgb on white, alpha, depth: [V, C, H, W]
    write_dataset(root, split_seeds("train", 1000), image_size=128, domain="object", n_novel=8)
    loader = DataLoader(MultiViewDataset(root, split="train"), batch_size=4, collate_fn=collate)

The folder format (for real renders too) is specified in ``gen3d.data.folder``.
"""

from .families import families, sample_object
from .folder import MultiViewDataset, MultiViewSample, collate, pack_dataset, split_seeds, write_dataset
from .procedural import Lighting, RenderedViews, object_cameras, render_object
from .shapes import ObjectSpec

__all__ = [
    "Lighting",
    "MultiViewDataset",
    "MultiViewSample",
    "ObjectSpec",
    "RenderedViews",
    "collate",
    "families",
    "object_cameras",
    "pack_dataset",
    "render_object",
    "sample_object",
    "split_seeds",
    "write_dataset",
]

"""Shared fixtures: paths to ../shared, golden data, seeded generators. Tests never touch the network."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as gen3d/__init__ does; torch is imported below

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GEN3D_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "reference" / "golden"
CHECKPOINT_DUMPS = SHARED / "reference" / "checkpoints"
IMAGES = SHARED / "images"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def load_golden(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = GOLDEN / f"{name}.safetensors"
    if not path.is_file():
        pytest.skip(f"golden file {path} not available (../shared missing)")
    return load_file(str(path))


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)

"""Colours and materials for the procedural families (sRGB in [0, 1], numpy Generator draws)."""

from __future__ import annotations

import colorsys

import numpy as np

from .shapes import Material

DARK = (0.08, 0.08, 0.09)  # coal, tyres, eyes


def hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def random_color(rng, hue=None, sat=(0.45, 0.9), val=(0.55, 0.95)):
    h = rng.uniform(0, 1) if hue is None else rng.uniform(*hue) if isinstance(hue, tuple) else hue
    return hsv(h, rng.uniform(*sat), rng.uniform(*val))


def random_material(rng, color=None, p_pattern=0.4, patterns=("stripes", "checks", "dots", "two_tone"),
                    specular=(0.05, 0.4)) -> Material:
    """A material of ``color`` (random if None), patterned with probability ``p_pattern``."""
    color = random_color(rng) if color is None else color
    if rng.uniform() >= p_pattern:
        return Material(color, specular=rng.uniform(*specular))
    pattern = str(rng.choice(patterns))
    h, s, v = colorsys.rgb_to_hsv(*color)
    color2 = hsv(h + rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.9), rng.uniform(0.6, 1.0)) if rng.uniform() < 0.6 \
        else hsv(h, s * 0.3, min(1.0, v * 0.4 + 0.6))
    axis = tuple(np.eye(3)[rng.integers(3)]) if rng.uniform() < 0.7 else tuple(rng.normal(size=3))
    return Material(color, color2, pattern, float(rng.uniform(1.5, 3.5)), axis, rng.uniform(*specular))


def plain(color, specular=0.15) -> Material:
    return Material(tuple(float(c) for c in color), specular=specular)


def wood(rng) -> tuple[float, float, float]:
    return hsv(rng.uniform(0.05, 0.11), rng.uniform(0.35, 0.7), rng.uniform(0.35, 0.85))

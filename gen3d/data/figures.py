"""Figures built from body parts: quadruped animals, rubber ducks, toy robots and people (avatars).

Same conventions as ``families``: +y up, feet on y = 0, facing +z.
"""

from __future__ import annotations

import numpy as np

from .palette import DARK, hsv, plain, random_color, random_material
from .shapes import Builder, Material

COAT_COLORS = (  # (hue, saturation, value) ranges of animal coats
    ((0.05, 0.1), (0.4, 0.8), (0.3, 0.7)),  # browns
    ((0.07, 0.1), (0.6, 0.9), (0.7, 0.95)),  # orange / ginger
    ((0.0, 1.0), (0.0, 0.08), (0.4, 0.7)),  # greys
    ((0.0, 1.0), (0.0, 0.06), (0.85, 0.98)),  # white
    ((0.0, 1.0), (0.0, 0.1), (0.12, 0.25)),  # black
    ((0.1, 0.14), (0.3, 0.6), (0.75, 0.95)),  # cream / tan
)
SKIN_TONES = ((0.98, 0.85, 0.74), (0.94, 0.76, 0.62), (0.85, 0.65, 0.5), (0.72, 0.52, 0.38),
              (0.55, 0.38, 0.26), (0.4, 0.27, 0.18))
HAIR_COLORS = ((0.1, 0.07, 0.05), (0.3, 0.18, 0.1), (0.55, 0.35, 0.18), (0.85, 0.7, 0.42), (0.6, 0.25, 0.1),
               (0.55, 0.55, 0.55), (0.9, 0.9, 0.88))


def _coat(rng) -> tuple[float, float, float]:
    hue, sat, val = COAT_COLORS[rng.integers(len(COAT_COLORS))]
    return hsv(rng.uniform(*hue), rng.uniform(*sat), rng.uniform(*val))


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def animal(rng, b: Builder) -> None:
    """A quadruped: ellipsoid body, capsule legs, neck and tail, head with snout, eyes and ears."""
    base = _coat(rng)
    style = rng.uniform()
    if style < 0.15:  # cow / dalmatian spots
        coat = Material(base, _coat(rng), "dots", float(rng.uniform(1.0, 1.8)), specular=0.1)
    elif style < 0.25:  # tiger / zebra stripes across the body
        coat = Material(base, DARK, "stripes", float(rng.uniform(2.0, 3.5)), (0, 0, 1), specular=0.1)
    else:
        coat = plain(base, 0.1)
    belly = plain(_coat(rng) if rng.uniform() < 0.3 else base, 0.1)
    half_l, half_w, half_h = rng.uniform(0.22, 0.36), rng.uniform(0.1, 0.16), rng.uniform(0.1, 0.16)
    leg_len, leg_r = rng.uniform(0.12, 0.38), rng.uniform(0.03, 0.05)
    body_y = leg_len + half_h * 0.6
    b.ellipsoid((0, body_y, 0), (half_w, half_h, half_l), coat)
    hoof = plain(DARK if rng.uniform() < 0.5 else base, 0.1)
    for sx in (-1, 1):
        for sz in (-1, 1):
            top = np.array([sx * half_w * 0.55, body_y - half_h * 0.2, sz * half_l * 0.62])
            foot = np.array([sx * half_w * 0.6, leg_r, sz * half_l * 0.62 + rng.uniform(-0.02, 0.02)])
            b.capsule(top, foot, leg_r, belly if sz > 0 else coat)
            b.ellipsoid(foot + (0, -leg_r * 0.3, leg_r * 0.3), (leg_r * 1.1, leg_r * 0.7, leg_r * 1.4), hoof)
    neck_len = rng.uniform(0.08, 0.45)
    neck_base = np.array([0, body_y + half_h * 0.3, half_l * 0.75])
    head_c = neck_base + _unit((0, rng.uniform(0.6, 1.0), rng.uniform(0.3, 0.8))) * neck_len
    head_r = rng.uniform(0.075, 0.11)
    b.capsule(neck_base, head_c, min(half_w, half_h) * rng.uniform(0.45, 0.7), coat)
    b.ellipsoid(head_c, (head_r * 0.85, head_r * 0.85, head_r * 1.05), coat)
    snout_len = rng.uniform(0.5, 1.0)
    b.ellipsoid(head_c + (0, -head_r * 0.3, head_r * (0.6 + 0.4 * snout_len)),
                (head_r * 0.5, head_r * 0.42, head_r * 0.6 * snout_len + 0.2 * head_r), belly)
    b.sphere(head_c + (0, -head_r * 0.2, head_r * (1.05 + 0.8 * snout_len)), head_r * 0.16, plain(DARK, 0.5))
    for sx in (-1, 1):
        b.sphere(head_c + (sx * head_r * 0.5, head_r * 0.3, head_r * 0.72), head_r * 0.14, plain(DARK, 0.6))
    ears = int(rng.integers(3))
    for sx in (-1, 1):
        root = head_c + (sx * head_r * 0.5, head_r * 0.65, -head_r * 0.1)
        if ears == 0:  # pointed
            b.frustum(root, root + (sx * head_r * 0.25, head_r * 0.7, 0), head_r * 0.3, 0.005, coat)
        elif ears == 1:  # floppy
            b.ellipsoid(root + (sx * head_r * 0.4, -head_r * 0.5, 0),
                        (head_r * 0.15, head_r * 0.55, head_r * 0.35), belly)
        else:  # round
            b.ellipsoid(root + (0, head_r * 0.2, 0), (head_r * 0.3, head_r * 0.3, head_r * 0.12), coat)
    if rng.uniform() < 0.25:  # horns
        for sx in (-1, 1):
            root = head_c + (sx * head_r * 0.35, head_r * 0.75, 0)
            b.frustum(root, root + (sx * head_r * 0.3, head_r * 0.8, -head_r * 0.2), head_r * 0.12, 0.004,
                      plain((0.9, 0.85, 0.75), 0.3))
    tail_root = np.array([0, body_y + half_h * 0.3, -half_l * 0.92])
    b.capsule(tail_root, tail_root + (0, rng.uniform(-0.15, 0.2), -rng.uniform(0.08, 0.25)),
              rng.uniform(0.012, 0.035), coat)


def duck(rng, b: Builder) -> None:
    """A rubber duck: body, head, beak, eyes and a pointed tail."""
    color = hsv(0.14, 0.85, 0.98) if rng.uniform() < 0.6 else random_color(rng)
    skin = random_material(rng, color, p_pattern=0.2, specular=(0.3, 0.6))
    b.ellipsoid((0, 0.2, 0), (0.26, 0.19, 0.34), skin)
    b.frustum((0, 0.25, -0.25), (0, 0.38, -0.42), 0.1, 0.02, skin)
    head = np.array([0, 0.5, 0.16])
    b.sphere(head, rng.uniform(0.15, 0.19), skin)
    beak = plain(hsv(0.06, 0.9, 0.95), 0.4)
    b.ellipsoid(head + (0, -0.03, 0.16), (0.09, 0.035, 0.1), beak)
    for sx in (-1, 1):
        b.sphere(head + (sx * 0.075, 0.05, 0.13), 0.028, plain(DARK, 0.7))
        b.ellipsoid((sx * 0.23, 0.24, -0.02), (0.05, 0.1, 0.18), skin)  # wings


def robot(rng, b: Builder) -> None:
    """A blocky toy robot: box body and head, capsule arms, cylinder legs, glowing eyes, antenna."""
    metal = random_material(rng, p_pattern=0.2, patterns=("stripes", "two_tone"), specular=(0.4, 0.7))
    joint = plain(random_color(rng, sat=(0.0, 0.3), val=(0.3, 0.6)), 0.5)
    glow = plain(hsv(rng.uniform(0, 1), 0.6, 1.0), 0.8)
    leg_h = rng.uniform(0.2, 0.35)
    body = np.array([rng.uniform(0.13, 0.2), rng.uniform(0.15, 0.22), rng.uniform(0.09, 0.14)])
    body_y = leg_h + body[1]
    b.round_box((0, body_y, 0), body, 0.03, metal)
    b.box((0, body_y + body[1] * 0.1, body[2]), (body[0] * 0.55, body[1] * 0.4, 0.01), joint)
    head = np.array([rng.uniform(0.08, 0.13), rng.uniform(0.07, 0.1), rng.uniform(0.07, 0.1)])
    head_y = body_y + body[1] + 0.03 + head[1]
    b.cylinder((0, body_y + body[1] - 0.01, 0), (0, head_y - head[1] + 0.01, 0), 0.035, joint)
    b.round_box((0, head_y, 0), head, 0.02, metal)
    for sx in (-1, 1):
        b.sphere((sx * head[0] * 0.45, head_y + head[1] * 0.15, head[2]), min(head) * 0.25, glow)
    b.cylinder((0, head_y + head[1], 0), (0, head_y + head[1] + 0.08, 0), 0.008, joint)
    b.sphere((0, head_y + head[1] + 0.09, 0), 0.022, glow)
    arm_r, spread = rng.uniform(0.025, 0.04), rng.uniform(0.05, 0.25)
    for sx in (-1, 1):
        shoulder = np.array([sx * (body[0] + arm_r), body_y + body[1] * 0.7, 0])
        hand = shoulder + (sx * spread, -body[1] * 1.5, rng.uniform(0.0, 0.15))
        b.sphere(shoulder, arm_r * 1.4, joint)
        b.capsule(shoulder, hand, arm_r, metal)
        b.sphere(hand, arm_r * 1.3, joint)
        hip = np.array([sx * body[0] * 0.5, leg_h, 0])
        b.cylinder((hip[0], 0.04, 0), hip + (0, 0.02, 0), rng.uniform(0.03, 0.05), joint)
        b.box((hip[0], 0.025, 0.02), (0.05, 0.025, 0.07), metal)


def person(rng, b: Builder) -> None:
    """A standing person (feet on y = 0, ~1 tall, facing +z) in clothes, with hair and a face."""
    skin = plain(SKIN_TONES[rng.integers(len(SKIN_TONES))], 0.15)
    hair = plain(HAIR_COLORS[rng.integers(len(HAIR_COLORS))], 0.25)
    shirt = random_material(rng, p_pattern=0.35, patterns=("stripes", "checks", "two_tone"), specular=(0.05, 0.2))
    trousers = random_material(rng, random_color(rng, sat=(0.2, 0.7), val=(0.2, 0.7)), p_pattern=0.1,
                               patterns=("checks",), specular=(0.05, 0.15))
    shoes = plain(random_color(rng, val=(0.1, 0.5)) if rng.uniform() < 0.5 else DARK, 0.4)
    head_scale = rng.uniform(0.9, 1.25)  # > 1: child-like proportions
    width = rng.uniform(0.85, 1.2)
    hip_y, shoulder_y = 0.5, 0.8
    # Legs: trousers, shorts or a skirt/dress.
    bottom = int(rng.choice([0, 0, 1, 2]))
    stance = rng.uniform(0.0, 0.04)
    for sx in (-1, 1):
        hip = np.array([sx * 0.055 * width, hip_y, 0])
        knee = np.array([sx * (0.06 * width + stance * 0.5), 0.27, 0.01])
        ankle = np.array([sx * (0.065 * width + stance), 0.065, 0])
        upper, lower = (trousers, trousers) if bottom == 0 else (trousers, skin) if bottom == 1 else (skin, skin)
        b.capsule(hip, knee, 0.05 * width, upper)
        b.capsule(knee, ankle, 0.04 * width, lower)
        b.round_box(ankle + (0, -0.035, 0.025), (0.04, 0.03, 0.07), 0.02, shoes)
    b.ellipsoid((0, hip_y + 0.02, 0), (0.1 * width, 0.07, 0.065), trousers)
    if bottom == 2:
        b.frustum((0, 0.62, 0), (0, rng.uniform(0.28, 0.42), 0), 0.1 * width, rng.uniform(0.14, 0.2) * width, trousers)
    # Torso and arms.
    b.ellipsoid((0, 0.66, 0), (0.12 * width, 0.17, 0.075), shirt)
    b.capsule((-0.1 * width, shoulder_y - 0.02, 0), (0.1 * width, shoulder_y - 0.02, 0), 0.05, shirt)
    sleeve_long = rng.uniform() < 0.6
    spread = rng.uniform(0.03, 0.12) if rng.uniform() < 0.85 else rng.uniform(0.25, 0.3)  # arms down or raised
    for sx in (-1, 1):
        shoulder = np.array([sx * 0.15 * width, shoulder_y - 0.02, 0])
        elbow = shoulder + (sx * spread * 0.9, -0.22 + spread * 0.5, rng.uniform(-0.02, 0.03))
        wrist = elbow + (sx * spread * 0.8, -0.19 + spread * 0.5, rng.uniform(0.0, 0.06))
        b.capsule(shoulder, elbow, 0.036 * width, shirt)
        b.capsule(elbow, wrist, 0.031 * width, shirt if sleeve_long else skin)
        b.ellipsoid(wrist + (sx * 0.005, -0.035, 0), (0.022, 0.04, 0.03), skin)
    if rng.uniform() < 0.15:  # backpack
        pack = plain(random_color(rng, val=(0.3, 0.8)), 0.2)
        b.round_box((0, 0.66, -0.1), (0.09 * width, 0.12, 0.045), 0.03, pack)
    _head(rng, b, skin, hair, head_scale)


def _head(rng, b: Builder, skin: Material, hair: Material, scale: float) -> None:
    """Neck, head, face and hair; the head grows with ``scale`` from the chin up."""
    chin_y = 0.86
    r = np.array([0.058, 0.072, 0.064]) * scale
    c = np.array([0.0, chin_y + r[1] * 0.95, 0.0])
    b.capsule((0, 0.79, 0), (0, chin_y + 0.01, 0), 0.03, skin)
    b.ellipsoid(c, r, skin)
    dark = plain(DARK, 0.6)
    for sx in (-1, 1):
        b.sphere(c + r * (sx * 0.38, 0.12, 0.86), 0.011 * scale, dark)
        b.sphere(c + r * (sx * 0.98, 0.0, 0.0), 0.012 * scale, skin)  # ears
    b.sphere(c + r * (0, -0.12, 1.0), 0.011 * scale, skin)  # nose
    b.ellipsoid(c + r * (0, -0.45, 0.9), (0.014 * scale, 0.004, 0.006), plain((0.6, 0.25, 0.25), 0.3))
    style = int(rng.integers(5))
    if style == 4:
        return  # bald
    b.ellipsoid(c + (0, r[1] * 0.08, -r[2] * 0.06), r * 1.08, hair, cut=r[1] * rng.uniform(0.05, 0.3))
    if style == 1:  # long hair down the back
        b.ellipsoid(c + (0, -r[1] * 0.7, -r[2] * 0.55), (r[0] * 1.05, r[1] * 1.4, r[2] * 0.5), hair)
    elif style == 2:  # bun
        b.sphere(c + (0, r[1] * 0.85, -r[2] * 0.75), r[0] * 0.5, hair)
    elif style == 3:  # cap
        cap = plain(random_color(rng), 0.2)
        b.ellipsoid(c + (0, r[1] * 0.15, -r[2] * 0.04), r * 1.12, cap, cut=r[1] * 0.25)
        b.box(c + (0, r[1] * 0.42, r[2] * 1.05), (r[0] * 0.85, 0.006, r[2] * 0.55), cap)

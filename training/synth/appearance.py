"""Appearance for synthetic hands: skin, nails, lights, backgrounds, occluders and camera effects.

Everything is batched on the engine's device with an explicit torch.Generator, so a seed fixes the
data. Images are (B, 3, H, W) float in [0, 1] (sRGB-ish; the shading is done in that space, which
is good enough for training data). Imports torch (and PIL for user background images) only.

Skin tones: `SKIN_TONES` spans very light to very dark skin, roughly the six Fitzpatrick types.
The values are round sRGB numbers in the range that skin-colour studies report. Each sample picks
a point between two neighbouring tones, then jitters it. Palms and fingertip pads are lighter and
pinker than the back of the hand, more so for darker skin. Knuckles and fingertips get a little
redness. Nails are a pale, slightly translucent pink with a stronger highlight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from backend.render import Light

# sRGB albedo, very light -> very dark (roughly Fitzpatrick I -> VI)
SKIN_TONES = torch.tensor(
    [
        [0.96, 0.80, 0.70],
        [0.90, 0.70, 0.58],
        [0.80, 0.58, 0.44],
        [0.66, 0.45, 0.32],
        [0.48, 0.31, 0.21],
        [0.30, 0.19, 0.13],
    ]
)
PALM_TINT = torch.tensor([0.93, 0.72, 0.64])  # palmar skin is lighter and pinker
NAIL_TINT = torch.tensor([0.95, 0.80, 0.78])


@dataclass
class Appearance:
    """Per-sample appearance choices (B = batch)."""

    albedo: Tensor  # (B, V, 3) per-vertex albedo
    lights: list[Light]  # directional lights, per-sample direction and colour
    ambient: float
    specular: float


# Bands of the tone coordinate (0 = first tone .. 5 = last) held out for the test split, so that
# test skin tones never occur in training; they are narrow and interleaved, so that training still
# spans the whole range from the lightest to the darkest skin.
TEST_TONE_BANDS = ((0.8, 1.2), (2.3, 2.7), (3.8, 4.2))


def _tone_intervals(split: str) -> list[tuple[float, float]]:
    if split == "all":
        return [(0.0, 5.0)]
    if split == "test":
        return list(TEST_TONE_BANDS)
    if split != "train":
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    edges = [0.0] + [x for band in TEST_TONE_BANDS for x in band] + [5.0]
    return [(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True) if b > a]


def sample_tone_coordinate(n: int, g: torch.Generator, split: str, device) -> Tensor:
    """(n,) positions along SKIN_TONES (0..5), uniform over the split's intervals."""
    iv = torch.tensor(_tone_intervals(split), device=device)
    lengths = iv[:, 1] - iv[:, 0]
    pick = torch.multinomial(lengths / lengths.sum(), n, replacement=True, generator=g)
    return iv[pick, 0] + torch.rand(n, generator=g, device=device) * lengths[pick]


def sample_skin(
    n: int,
    g: torch.Generator,
    rest_verts: Tensor,
    palm_weight: Tensor,
    nail_mask: Tensor,
    redness: Tensor,
    device,
    split: str = "all",
) -> Tensor:
    """(n, V, 3) per-vertex albedo.

    rest_verts (V, 3) rest mesh (for low-frequency blotches), palm_weight (V,) in [0, 1] how
    palmar each vertex is, nail_mask (V,) bool, redness (V,) in [0, 1] knuckles and tips."""
    u = lambda *s: torch.rand(*s, generator=g, device=device)  # noqa: E731
    tones = SKIN_TONES.to(device)
    pos = sample_tone_coordinate(n, g, split, device)
    lo = pos.floor().long().clamp(max=len(tones) - 2)
    t = (pos - lo)[:, None]
    base = tones[lo] * (1 - t) + tones[lo + 1] * t  # (n, 3)
    base = base * (1 + (u(n, 3) - 0.5) * 0.12) * (0.85 + 0.3 * u(n, 1))  # tone and exposure
    darkness = 1 - base.mean(dim=1, keepdim=True)  # darker skin -> lighter palms (relative)
    palm = base + (PALM_TINT.to(device) * base.mean(1, keepdim=True).sqrt() - base) * (
        0.25 + 0.6 * darkness
    )
    w = palm_weight.to(device)[None, :, None]
    albedo = base[:, None] * (1 - w) + palm[:, None] * w  # (n, V, 3)
    # redness on knuckles and fingertips
    red = torch.tensor([1.06, 0.92, 0.92], device=device)
    albedo = albedo * (1 + (red - 1) * redness.to(device)[None, :, None] * u(n, 1, 1))
    # low-frequency blotches: a few random sinusoids over the rest surface
    freq = torch.randn(n, 4, 3, generator=g, device=device) * 60.0  # cycles per metre
    phase = u(n, 4) * 2 * math.pi
    wave = torch.sin(torch.einsum("vc,nkc->nvk", rest_verts.to(device), freq) + phase[:, None])
    albedo = albedo * (1 + 0.05 * wave.mean(-1, keepdim=True))
    nails = NAIL_TINT.to(device) * (0.85 + 0.15 * u(n, 1)) * (0.6 + 0.4 * base.mean(1, True))
    albedo = torch.where(nail_mask.to(device)[None, :, None], nails[:, None], albedo)
    return albedo.clamp(0.0, 1.0)


def sample_lights(n: int, g: torch.Generator, device) -> tuple[list[Light], float, float]:
    """Three directional lights (key, fill, rim) with random directions, colours, strengths."""
    u = lambda *s: torch.rand(*s, generator=g, device=device)  # noqa: E731
    lights = []
    for k, strength in enumerate((0.9, 0.45, 0.35)):
        d = torch.randn(n, 3, generator=g, device=device)
        d[:, 2] = d[:, 2].abs() * (1.0 if k < 2 else -0.5)  # key/fill from the camera side
        warm = u(n, 1) * 2 - 1  # -1 cool .. +1 warm
        colour = torch.cat([1 + 0.15 * warm, torch.ones_like(warm), 1 - 0.15 * warm], dim=1)
        lights.append(Light(direction=d, color=colour * strength * (0.3 + 0.9 * u(n, 1))))
    ambient = float(0.15 + 0.3 * u(1))
    specular = float(0.02 + 0.16 * u(1))
    return lights, ambient, specular


# ----------------------------------------------------------------------------- backgrounds


def _noise(n: int, g: torch.Generator, size: int, device, octaves: int = 5) -> Tensor:
    """(n, 1, size, size) fractal value noise in [0, 1]."""
    out = torch.zeros(n, 1, size, size, device=device)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = 2 ** (o + 2)
        grid = torch.rand(n, 1, cells, cells, generator=g, device=device)
        out += amp * F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False)
        total += amp
        amp *= 0.55
    out = out / total
    lo = out.amin(dim=(2, 3), keepdim=True)
    hi = out.amax(dim=(2, 3), keepdim=True)
    return (out - lo) / (hi - lo + 1e-6)


def _palette(n: int, g: torch.Generator, k: int, device) -> Tensor:
    """(n, k, 3) random colours, biased towards the muted colours of indoor scenes."""
    c = torch.rand(n, k, 3, generator=g, device=device)
    grey = c.mean(-1, keepdim=True)
    sat = torch.rand(n, k, 1, generator=g, device=device) * 0.8
    return (grey + (c - grey) * sat).clamp(0, 1) * (
        0.3 + 0.8 * torch.rand(n, k, 1, generator=g, device=device)
    )


def procedural_backgrounds(n: int, g: torch.Generator, size: int, device) -> Tensor:
    """(n, 3, size, size) backgrounds: a mix of gradients, fractal noise, stripes and clutter."""
    u = lambda *s: torch.rand(*s, generator=g, device=device)  # noqa: E731
    yy, xx = torch.meshgrid(
        torch.linspace(-1, 1, size, device=device),
        torch.linspace(-1, 1, size, device=device),
        indexing="ij",
    )
    pal = _palette(n, g, 4, device)  # (n, 4, 3)
    # 1. linear gradient between two colours along a random direction
    ang = u(n) * 2 * math.pi
    t = xx[None] * torch.cos(ang)[:, None, None] + yy[None] * torch.sin(ang)[:, None, None]
    t = ((t + 1.5) / 3)[:, None].clamp(0, 1)
    img = pal[:, 0, :, None, None] * (1 - t) + pal[:, 1, :, None, None] * t
    # 2. fractal noise textures (wood, stone, fabric-like), blended in by a random amount
    tex = _noise(n, g, size, device)
    tex_col = pal[:, 2, :, None, None] * tex + pal[:, 3, :, None, None] * (1 - tex)
    img = img + (tex_col - img) * (u(n, 1, 1, 1) * (u(n, 1, 1, 1) < 0.7))
    # 3. stripes or checks at a random angle and frequency
    freq = 3 + 20 * u(n)
    ang = u(n) * math.pi
    s1 = torch.sin(
        freq[:, None, None]
        * (xx * torch.cos(ang)[:, None, None] + yy * torch.sin(ang)[:, None, None])
    )
    s2 = torch.sin(
        freq[:, None, None]
        * (-xx * torch.sin(ang)[:, None, None] + yy * torch.cos(ang)[:, None, None])
    )
    checks = torch.where(u(n, 1, 1) < 0.5, s1, s1 * s2)
    pattern = (checks > 0).float()[:, None] * 0.25 - 0.125
    img = img + pattern * (u(n, 1, 1, 1) < 0.25)
    # 4. clutter: soft-edged ellipses and rectangles of random colours
    for _ in range(6):
        present = (u(n, 1, 1, 1) < 0.5).float()
        c = (u(n, 2) * 2.4 - 1.2)[:, :, None, None]
        r = (0.05 + 0.5 * u(n, 2))[:, :, None, None]
        rot = u(n) * math.pi
        ca, sa = torch.cos(rot)[:, None, None], torch.sin(rot)[:, None, None]
        dx, dy = xx[None] - c[:, 0], yy[None] - c[:, 1]
        lx, ly = (dx * ca + dy * sa) / r[:, 0], (-dx * sa + dy * ca) / r[:, 1]
        ellipse = lx**2 + ly**2
        box = torch.maximum(lx.abs(), ly.abs()) ** 2
        shape = torch.where(u(n, 1, 1) < 0.5, ellipse, box)
        alpha = torch.sigmoid((1 - shape) * 30)[:, None] * present
        colour = _palette(n, g, 1, device)[:, 0, :, None, None]
        img = img * (1 - alpha) + colour * alpha
    return img.clamp(0, 1)


def test_backgrounds(n: int, g: torch.Generator, size: int, device) -> Tensor:
    """(n, 3, size, size) a background family never used in training: soft Voronoi cells over a
    sinusoidal plasma (the synthetic test split's backgrounds are disjoint from training's)."""
    yy, xx = torch.meshgrid(
        torch.linspace(-1, 1, size, device=device),
        torch.linspace(-1, 1, size, device=device),
        indexing="ij",
    )
    seeds = torch.rand(n, 12, 2, generator=g, device=device) * 2.4 - 1.2
    d = (xx[None, None] - seeds[..., 0, None, None]) ** 2 + (
        yy[None, None] - seeds[..., 1, None, None]
    ) ** 2  # (n, 12, H, W)
    weights = torch.softmax(-d * 80, dim=1)
    colours = _palette(n, g, 12, device)  # (n, 12, 3)
    cells = torch.einsum("nkhw,nkc->nchw", weights, colours)
    f = 2 + 6 * torch.rand(n, 3, 1, 1, generator=g, device=device)
    plasma = 0.5 + 0.5 * torch.sin(f * xx[None, None] + torch.sin(f * yy[None, None] * 1.3))
    return (0.75 * cells + 0.25 * plasma).clamp(0, 1)


class ImageFolderBackgrounds:
    """Random square crops of the user's own images (any PIL-readable files under `folder`)."""

    EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"background folder {folder} does not exist")
        self.files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in self.EXTENSIONS)
        if not self.files:
            raise FileNotFoundError(f"no images ({', '.join(self.EXTENSIONS)}) under {folder}")

    def sample(self, n: int, g: torch.Generator, size: int, device) -> Tensor:
        """(n, 3, size, size) random crops, resized, randomly flipped."""
        from PIL import Image

        out = []
        picks = torch.randint(len(self.files), (n,), generator=g).tolist()
        for idx in picks:
            with Image.open(self.files[idx]) as im:
                im = im.convert("RGB")
                w, h = im.size
                side = int(min(w, h) * (0.3 + 0.7 * torch.rand(1, generator=g).item()))
                x0 = int(torch.randint(w - side + 1, (1,), generator=g))
                y0 = int(torch.randint(h - side + 1, (1,), generator=g))
                im = im.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BILINEAR)
                arr = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255
            if torch.rand(1, generator=g).item() < 0.5:
                arr = arr.flip(-1)
            out.append(arr)
        return torch.stack(out).to(device)


# ------------------------------------------------------------------------------ occluders


def occluders(
    n: int, g: torch.Generator, size: int, hand_mask: Tensor, device, prob: float = 0.3
) -> tuple[Tensor, Tensor]:
    """Random objects in front of the hand: (n, 3, H, W) colour and (n, 1, H, W) alpha.

    Each occluder is a soft-edged ellipse or rounded bar placed near the hand's mask centre, so
    it covers part of the hand (not the whole: its size is at most half the hand's extent)."""
    u = lambda *s: torch.rand(*s, generator=g, device=device)  # noqa: E731
    yy, xx = torch.meshgrid(
        torch.linspace(-1, 1, size, device=device),
        torch.linspace(-1, 1, size, device=device),
        indexing="ij",
    )
    m = hand_mask.float()
    area = m.sum(dim=(1, 2)).clamp(min=1)
    cx = (m * xx).sum(dim=(1, 2)) / area
    cy = (m * yy).sum(dim=(1, 2)) / area
    extent = (area / (size * size)).sqrt() * 2  # ~ hand side in normalised units
    present = (u(n) < prob).float()
    ox = cx + (u(n) - 0.5) * extent * 1.2
    oy = cy + (u(n) - 0.5) * extent * 1.2
    rx = extent * (0.1 + 0.35 * u(n))
    ry = rx * (0.3 + 1.5 * u(n))
    rot = u(n) * math.pi
    ca, sa = torch.cos(rot)[:, None, None], torch.sin(rot)[:, None, None]
    dx, dy = xx[None] - ox[:, None, None], yy[None] - oy[:, None, None]
    lx = (dx * ca + dy * sa) / rx[:, None, None]
    ly = (-dx * sa + dy * ca) / ry[:, None, None]
    d = lx**2 + ly**2
    alpha = torch.sigmoid((1 - d) * 25) * present[:, None, None]
    shade = 0.7 + 0.3 * (1 - d.clamp(0, 1))  # a little roundness
    colour = _palette(n, g, 1, device)[:, 0, :, None, None] * shade[:, None]
    return colour.clamp(0, 1), alpha[:, None]


# -------------------------------------------------------------------------- camera effects


def _gaussian_kernels(sigma: Tensor, radius: int) -> Tensor:
    """(n, 2r+1) normalised 1D Gaussian kernels, sigma (n,) in pixels (0 -> identity)."""
    x = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    k = torch.exp(-(x[None] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    return k / k.sum(dim=1, keepdim=True)


def blur(img: Tensor, sigma: Tensor) -> Tensor:
    """Per-sample separable Gaussian blur; img (n, 3, H, W), sigma (n,) pixels."""
    n, c, h, w = img.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    k = _gaussian_kernels(sigma, radius).repeat_interleave(c, dim=0)  # (n*c, K)
    x = img.reshape(1, n * c, h, w)
    x = F.conv2d(
        F.pad(x, (radius, radius, 0, 0), mode="replicate"), k[:, None, None, :], groups=n * c
    )
    x = F.conv2d(
        F.pad(x, (0, 0, radius, radius), mode="replicate"), k[:, None, :, None], groups=n * c
    )
    return x.reshape(n, c, h, w)


# JPEG luminance quantisation table (ITU-T T.81 Annex K), used for all channels here
_JPEG_Q = torch.tensor(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=torch.float32,
)


def _dct_matrix(device) -> Tensor:
    k = torch.arange(8, dtype=torch.float32, device=device)
    m = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m  # orthonormal DCT-II rows


def jpeg_artifacts(img: Tensor, quality: Tensor) -> Tensor:
    """Approximate JPEG compression: 8x8 block DCT, quantise with the standard table scaled for
    `quality` (n,) in 1..100, inverse DCT. Works per channel in YCbCr, like JPEG."""
    n, c, h, w = img.shape
    ycc = torch.tensor(
        [[0.299, 0.587, 0.114], [-0.1687, -0.3313, 0.5], [0.5, -0.4187, -0.0813]], device=img.device
    )
    x = torch.einsum("ij,njhw->nihw", ycc, img) * 255
    x[:, 0] -= 128
    q = quality.clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q) / 100  # libjpeg's quality scaling
    table = (_JPEG_Q.to(img.device)[None] * scale[:, None, None]).clamp(min=1)  # (n, 8, 8)
    d = _dct_matrix(img.device)
    blocks = x.reshape(n, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)  # (n,c,bh,bw,8,8)
    coef = d @ blocks @ d.T
    tq = table[:, None, None, None]
    coef = torch.round(coef / tq) * tq
    x = (d.T @ coef @ d).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)
    x[:, 0] += 128
    inv = torch.linalg.inv(ycc)
    return (torch.einsum("ij,njhw->nihw", inv, x / 255)).clamp(0, 1)


def camera_effects(img: Tensor, g: torch.Generator) -> Tensor:
    """Blur, colour jitter, gamma, sensor noise and JPEG artefacts, each sampled per image."""
    n = img.shape[0]
    device = img.device
    u = lambda *s: torch.rand(*s, generator=g, device=device)  # noqa: E731
    sigma = torch.where(u(n) < 0.5, u(n) * 1.6, torch.zeros(n, device=device))
    img = blur(img, sigma)
    # colour jitter: brightness, contrast, saturation, white balance, gamma
    img = img * (0.7 + 0.6 * u(n, 1, 1, 1))
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    img = (img - mean) * (0.7 + 0.6 * u(n, 1, 1, 1)) + mean
    grey = img.mean(dim=1, keepdim=True)
    img = grey + (img - grey) * (0.6 + 0.8 * u(n, 1, 1, 1))
    img = img * (1 + (u(n, 3, 1, 1) - 0.5) * 0.16)
    img = img.clamp(0, 1) ** (0.8 + 0.4 * u(n, 1, 1, 1))
    # sensor noise
    noise = torch.randn(img.shape, generator=g, device=device) * (u(n, 1, 1, 1) * 0.04)
    img = (img + noise).clamp(0, 1)
    # JPEG artefacts on most images
    quality = torch.where(u(n) < 0.7, 25 + 70 * u(n), torch.full((n,), 100.0, device=device))
    return jpeg_artifacts(img, quality)

"""Out-of-distribution sets for the AV-digits models, written as real media files (issue 27).

    python -m benchmarks.ood.sets [OUT_DIR] [--seed 0]     # no OUT_DIR: into the cache, once; prints items.csv

Each set is one *kind* of input that is not a spoken or handwritten digit, built from what this
machine has: espeak-ng, the GRID clips in ../shared/data, fonts, scikit-image's bundled photographs
and faces, and signals drawn with numpy. Every kind belongs to exactly one group:

- `tune`: kept for choosing detectors, thresholds and hyper-parameters later; never reported as a result;
- `report`, split as OpenOOD v1.5 does into `near` (inputs that share the task's surface: speech that
  is not digits; faces, letters, symbols, hand-drawn strokes) and `far` (noise, tones, chords,
  silence, DC, clipping; constant or noise frames, photographs, moving shapes).

A kind never appears in both groups (KINDS is checked for it at import), so whatever is chosen on
`tune` has seen nothing of what is reported. Glyph-like video (letters, symbols, strokes, faces and
the tune set's Greek letters) is drawn the way AV-digits draws its digits (benchmarks.avdigits.build:
MNIST's 28x28 frame, 2x, drifting on black), so only the content differs from in-distribution.

Speech (every near audio kind) is recorded as AV-digits records its digits: 8 kHz, white noise at an
SNR drawn from -5 to 20 dB, peak 0.9 (benchmarks.avdigits.build). Version 1 left it clean at 16 kHz
while every in-distribution clip is noised at 8 kHz, so a detector could tell the two apart by the
recording alone: a clean recording of a digit would have scored as "not a digit" just the same.
Now only what is said differs; how the model takes clean recordings of digits is measured apart
(benchmarks.ood.run.clean_speech). Other audio files are 16-bit wav at 16 kHz (the default model's
rate; the decoders resample any other); video files are
MPEG-4 Part 2 mp4 (FFmpeg's encoder: the same frames give the same bytes in every run). Every kind
draws from its own seeded stream, so a build is byte-for-byte the same for a seed, and adding a kind
changes no other.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import logging
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from benchmarks.avdigits.build import (
    FPS,
    SAMPLE_RATE,
    SHARED,
    SIZE,
    SYNTH_ACCENTS,
    SYNTH_PITCH,
    SYNTH_SPEED,
    _noisy,
    digit_clip,
    synthetic_variants,
)
from common.hashing import sha256_file
from common.media import decode_audio
from training.data.files import built_once, cache_root
from training.data.writers import write_audio, write_video

log = logging.getLogger(__name__)
VERSION = 2  # of the recipe: a change to any builder bumps it, so a cached build is never mistaken for the new one
AUDIO_RATE = 16_000
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
# DejaVuSans.ttf is what `make system-deps` installs (fonts-dejavu-core); the others are used where present.
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf")
FRAMES = 8  # per generated clip, at AV-digits' 8 fps: one second, as in-distribution clips last

Modality = Literal["audio", "video"]
Group = Literal["tune", "report"]
Distance = Literal["near", "far"]
Media = np.ndarray  # audio: mono float wave in [-1, 1] at AUDIO_RATE; video: uint8 RGB frames [T, H, W, 3]


class MissingToolError(Exception):
    """A program or data set a builder needs is absent."""


@dataclass(frozen=True)
class Kind:
    """One OOD set: how its items are drawn (the builder's name is the kind's), which group it belongs to, what it is."""

    make: Callable[[np.random.Generator, int], Iterator[Media]]
    modality: Modality
    group: Group
    distance: Distance
    count: int  # items built (the GRID kinds: at most; there are 11 clips)
    about: str  # one line for the report
    fps: int = FPS  # video kinds: frames per second of the file written
    rate: int = AUDIO_RATE  # audio kinds: samples per second of the file written

    @property
    def name(self) -> str:
        return self.make.__name__


@dataclass(frozen=True)
class Item:
    path: Path
    modality: Modality
    kind: str
    group: Group
    distance: Distance


# --- audio --------------------------------------------------------------------------------
# No digit, nor a word that sounds like one (for, to, too, won, ate, oh, nein, ...).
WORDS = (
    "apple", "house", "water", "green", "table", "music", "river", "window", "yellow", "garden",
    "paper", "chair", "happy", "money", "quiet", "rabbit", "orange", "pencil", "silver", "thunder",
    "morning", "basket", "candle", "doctor", "engine", "forest", "guitar", "island", "jacket", "kitchen",
)  # fmt: skip
SENTENCES = (
    "the cat sat on the mat", "please close the door", "where is the station", "she sells sea shells",
    "good morning everybody", "it is raining again", "turn left at the corner", "my name is alice",
    "how are you today", "the quick brown fox jumps", "open the window please", "what time is it",
    "I like green apples", "bring me the blue book", "we are going home",
)  # fmt: skip
LETTERS = tuple("abcdefghijklmnpqrstuvwxyz")  # spoken as their names; no "o", which is how zero is often said


def _recorded(wave: np.ndarray, rng: np.random.Generator) -> Media:
    """A wave at SAMPLE_RATE as AV-digits records its clips: white noise at an SNR from its range, peak 0.9."""
    return _noisy(wave, rng, clean=False)[0]


def _speak(texts: Iterable[str], rng: np.random.Generator, clean: bool = False) -> Iterator[Media]:
    """Each text spoken by espeak-ng in a voice drawn as the training split's synthetic voices are
    (an English accent, a variant, a pitch, a speed) and recorded as AV-digits' clips are (8 kHz, noised):
    only the words differ from what the model learnt. `clean`: 8 kHz with no noise added."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise MissingToolError("espeak-ng is not installed (Debian package espeak-ng; `make system-deps` installs it)")
    variants = synthetic_variants()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        for text in texts:
            voice = f"{SYNTH_ACCENTS[rng.integers(len(SYNTH_ACCENTS))]}+{variants[rng.integers(len(variants))]}"
            pitch, speed = rng.integers(*SYNTH_PITCH, endpoint=True), rng.integers(*SYNTH_SPEED, endpoint=True)
            cmd = [exe, "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(path), text]
            subprocess.run(cmd, check=True, capture_output=True, timeout=30)
            wave = decode_audio(path, SAMPLE_RATE)
            yield wave if clean else _recorded(wave, rng)


def _texts(pool: tuple[str, ...], n: int) -> list[str]:
    """n texts: every one of the pool once, then again (in a new voice), as many times as needed."""
    return [pool[i % len(pool)] for i in range(n)]


def espeak_letters(rng: np.random.Generator, n: int) -> Iterator[Media]:
    return _speak(_texts(LETTERS, n), rng)


def espeak_words(rng: np.random.Generator, n: int) -> Iterator[Media]:
    return _speak(_texts(WORDS, n), rng)


def espeak_sentences(rng: np.random.Generator, n: int) -> Iterator[Media]:
    return _speak(_texts(SENTENCES, n), rng)


def _grid_clips() -> list[Path]:
    clips = sorted((SHARED / "grid").glob("*.mpg"))
    if not clips:
        raise MissingToolError(f"no GRID clips in {SHARED / 'grid'}")
    return clips


# GRID sentences say "command colour preposition letter DIGIT adverb" in 3 s; swwp2s.align puts the digit at
# 1.44-1.73 s. The first second (command, colour) and the last (the adverb, silence) hold no digit.
GRID_AUDIO_WINDOWS = ((0.0, 1.0), (2.0, 3.0))


def grid_speech(rng: np.random.Generator, n: int) -> Iterator[Media]:
    """Real speech that is not a digit: GRID's audio tracks, the windows before and after the spoken digit,
    recorded as AV-digits' clips are (8 kHz, noised)."""
    for clip in _grid_clips():
        wave = decode_audio(clip, SAMPLE_RATE)
        for start, end in GRID_AUDIO_WINDOWS:
            yield _recorded(wave[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)], rng)


def _seconds(rng: np.random.Generator) -> np.ndarray:
    """Sample times for a duration drawn from 0.5-2 s: as varied as FSDD's clips, cropped or padded to 1 s by the decoder."""
    return np.arange(int(rng.uniform(0.5, 2.0) * AUDIO_RATE)) / AUDIO_RATE


def _peak(wave: np.ndarray, peak: float) -> np.ndarray:
    return peak * wave / max(1e-12, float(np.abs(wave).max()))


def _coloured(rng: np.random.Generator, samples: int, exponent: float) -> np.ndarray:
    """Gaussian noise whose power spectrum goes as f**exponent (0 white, -1 pink, -2 brown, 1 blue, 2 violet)."""
    spectrum = np.fft.rfft(rng.normal(size=samples))
    f = np.fft.rfftfreq(samples)
    f[0] = f[1]
    return np.fft.irfft(spectrum * f ** (exponent / 2), samples)


def white_noise(rng: np.random.Generator, n: int) -> Iterator[Media]:
    for _ in range(n):
        yield _peak(_coloured(rng, len(_seconds(rng)), 0.0), rng.uniform(0.1, 0.9))


NOISE_COLOURS = {"pink": -1.0, "brown": -2.0, "blue": 1.0, "violet": 2.0}


def coloured_noise(rng: np.random.Generator, n: int) -> Iterator[Media]:
    """Pink, brown, blue and violet noise in turn (white is a tune kind)."""
    for exponent in itertools.islice(itertools.cycle(NOISE_COLOURS.values()), n):
        yield _peak(_coloured(rng, len(_seconds(rng)), exponent), rng.uniform(0.1, 0.9))


def pure_tones(rng: np.random.Generator, n: int) -> Iterator[Media]:
    for _ in range(n):
        t = _seconds(rng)
        yield rng.uniform(0.1, 0.9) * np.sin(2 * np.pi * np.exp(rng.uniform(np.log(80), np.log(4000))) * t)


CHORDS = ((0, 4, 7), (0, 3, 7), (0, 4, 7, 10), (0, 4, 7, 11), (0, 3, 7, 10))  # major, minor, dominant/major/minor seventh


def chords(rng: np.random.Generator, n: int) -> Iterator[Media]:
    """Equal-tempered chords on a random root, each note with a few harmonics and a piano-like decay."""
    for _ in range(n):
        t = _seconds(rng)
        root = rng.integers(40, 72)
        notes = [440.0 * 2 ** ((root + step - 69) / 12) for step in CHORDS[rng.integers(len(CHORDS))]]
        wave = sum(np.sin(2 * np.pi * f * h * t) / h for f in notes for h in (1, 2, 3))
        envelope = np.minimum(1.0, t / 0.01) * np.exp(-t * rng.uniform(0.5, 4.0))
        yield _peak(wave * envelope, rng.uniform(0.2, 0.9))


def silence(rng: np.random.Generator, n: int) -> Iterator[Media]:
    """Digital silence (every other item) and near-silence: white noise at -80 to -60 dBFS RMS."""
    for i in range(n):
        samples = len(_seconds(rng))
        yield np.zeros(samples) if i % 2 == 0 else rng.normal(0, 10 ** (rng.uniform(-80, -60) / 20), samples)


def dc(rng: np.random.Generator, n: int) -> Iterator[Media]:
    """A constant offset, of either sign: what an unplugged or biased input sends."""
    for _ in range(n):
        yield np.full(len(_seconds(rng)), rng.choice([-1, 1]) * rng.uniform(0.05, 0.9))


def clipped(rng: np.random.Generator, n: int) -> Iterator[Media]:
    """A sine (every other item) or white noise amplified 10-100x and clipped at full scale: square waves, binary noise."""
    for i in range(n):
        t = _seconds(rng)
        wave = np.sin(2 * np.pi * rng.uniform(100, 2000) * t) if i % 2 == 0 else rng.normal(size=len(t))
        yield np.clip(wave * rng.uniform(10, 100), -1.0, 1.0)


# --- video --------------------------------------------------------------------------------
def _fonts() -> list[Path]:
    fonts = [FONT_DIR / f for f in FONTS if (FONT_DIR / f).is_file()]
    if not fonts:
        raise MissingToolError(f"no DejaVu font in {FONT_DIR} (Debian package fonts-dejavu-core; `make system-deps` installs it)")
    return fonts


def _mnist_frame(drawing: Image.Image) -> np.ndarray:
    """[28, 28] uint8: a white-on-black drawing framed as MNIST frames its digits: its bounding box scaled
    into 20x20 (aspect kept), its centre of mass moved to the centre."""
    box = drawing.getbbox()
    if box is None:
        raise ValueError("nothing drawn")
    crop = drawing.crop(box)
    scale = 20 / max(crop.size)
    size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    small = np.asarray(crop.resize(size, Image.Resampling.LANCZOS), dtype=np.float64)
    canvas = np.zeros((28, 28))
    y, x = (28 - size[1]) // 2, (28 - size[0]) // 2
    canvas[y : y + size[1], x : x + size[0]] = small
    cy, cx = ndimage.center_of_mass(canvas)
    canvas = ndimage.shift(canvas, (round(13.5 - cy), round(13.5 - cx)), order=0)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _glyph(char: str, font: Path, weight: int) -> np.ndarray:
    image = Image.new("L", (192, 192))
    ImageDraw.Draw(image).text(
        (96, 96), char, fill=255, font=ImageFont.truetype(str(font), 112), anchor="mm", stroke_width=weight
    )
    return _mnist_frame(image)


def _glyph_clips(chars: str, rng: np.random.Generator, n: int) -> Iterator[Media]:
    """Each char in turn in a random font and stroke weight, drawn and moved as AV-digits moves its digits."""
    fonts = _fonts()
    for i in range(n):
        image = _glyph(chars[i % len(chars)], fonts[rng.integers(len(fonts))], int(rng.integers(0, 6)))
        yield digit_clip(image, rng, "")


# Latin letters but those drawn as a digit is (O, o: 0; I, l: 1); the ones close to a digit (S, Z, b, g) stay: that is near.
LATIN = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz"
SYMBOLS = "+-=*#@%&?!$/<>()[]{}~^:;"
# Greek letters unlike any Latin letter, digit or symbol above (no omicron, iota, nu, kappa, rho, upsilon, chi, ...).
GREEK = "αβγδεζηθλμξπστφψωΓΔΘΛΞΠΣΦΨΩ"


def latin_letters(rng: np.random.Generator, n: int) -> Iterator[Media]:
    return _glyph_clips(LATIN, rng, n)


def symbols(rng: np.random.Generator, n: int) -> Iterator[Media]:
    return _glyph_clips(SYMBOLS, rng, n)


def greek_letters(rng: np.random.Generator, n: int) -> Iterator[Media]:
    return _glyph_clips(GREEK, rng, n)


def _bezier(points: np.ndarray, steps: int = 48) -> list[tuple[float, float]]:
    t = np.linspace(0, 1, steps)[:, None]
    p0, p1, p2, p3 = points
    curve = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3
    return [(float(x), float(y)) for x, y in curve]


def strokes(rng: np.random.Generator, n: int) -> Iterator[Media]:
    """Handwriting-like scribbles that are no digit: 1-3 cubic Bezier strokes of a pen's width, framed as MNIST frames digits."""
    for _ in range(n):
        image = Image.new("L", (112, 112))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.integers(1, 4)):
            draw.line(_bezier(rng.uniform(16, 96, (4, 2))), fill=255, width=int(rng.integers(6, 12)), joint="curve")
        yield digit_clip(_mnist_frame(image), rng, "")


def _skimage_data() -> Any:
    """scikit-image's data module: photographs and faces shipped in its wheel (none of the ones used here is downloaded)."""
    try:
        from skimage import data
    except ImportError as exc:
        raise MissingToolError("scikit-image is not installed (pip install scikit-image; `make bench-ood` does)") from exc
    return data


def faces(rng: np.random.Generator, n: int) -> Iterator[Media]:
    """Faces from Labeled Faces in the Wild (scikit-image's bundled 25x25 crops), in the digit's frame."""
    crops = _skimage_data().lfw_subset()[:100]  # the first 100 are faces, the rest are not
    for i in rng.permutation(len(crops))[:n]:
        face = Image.fromarray((crops[i] * 255).astype(np.uint8)).resize((28, 28), Image.Resampling.BICUBIC)
        yield digit_clip(np.asarray(face), rng, "")


def _grid_frames(clip: Path) -> np.ndarray:
    with av.open(str(clip)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


GRID_FPS = 25


def grid_faces(rng: np.random.Generator, n: int) -> Iterator[Media]:
    """A real talking face: each GRID clip cut into its three 1-s windows, at its own size and frame rate."""
    for clip in _grid_clips():
        frames = _grid_frames(clip)
        for start in range(0, len(frames) - GRID_FPS + 1, GRID_FPS):
            yield frames[start : start + GRID_FPS]


def _clip(draw_frame: Callable[[int], np.ndarray]) -> np.ndarray:
    return np.stack([draw_frame(i) for i in range(FRAMES)]).astype(np.uint8)


def constant_frames(rng: np.random.Generator, n: int) -> Iterator[Media]:
    """One colour throughout: black, white, then random colours."""
    for i in range(n):
        colour = (0, 0, 0) if i == 0 else (255, 255, 255) if i == 1 else tuple(rng.integers(0, 256, 3))
        yield np.broadcast_to(np.array(colour, np.uint8), (FRAMES, SIZE, SIZE, 3)).copy()


def noise_frames(rng: np.random.Generator, n: int) -> Iterator[Media]:
    """New noise every frame: uniform RGB, Gaussian grey, salt and pepper in turn."""
    for i in range(n):
        shape = (FRAMES, SIZE, SIZE)
        if i % 3 == 0:
            yield rng.integers(0, 256, (*shape, 3)).astype(np.uint8)
        elif i % 3 == 1:
            grey = np.clip(rng.normal(128, rng.uniform(20, 80), shape), 0, 255)
            yield np.repeat(grey[..., None], 3, axis=-1).astype(np.uint8)
        else:
            dots = (rng.random(shape) < rng.uniform(0.05, 0.5)) * 255 * (rng.random(shape) < 0.5)
            yield np.repeat(dots[..., None], 3, axis=-1).astype(np.uint8)


# scikit-image's bundled photographs (in its wheel: nothing is downloaded); textures and synthetic images left out.
PHOTOS = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "coins",
    "moon",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)


def photos(rng: np.random.Generator, n: int) -> Iterator[Media]:
    """A slow pan over a random square crop of a natural photograph (30-100% of its short side)."""
    data = _skimage_data()
    images = [np.asarray(getattr(data, name)()) for name in PHOTOS]
    for i in range(n):
        image = images[i % len(images)]
        rgb = Image.fromarray(image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)).convert("RGB")
        side = int(rng.uniform(0.3, 1.0) * min(rgb.size))
        start = rng.integers(0, [rgb.width - side + 1, rgb.height - side + 1])
        end = rng.integers(0, [rgb.width - side + 1, rgb.height - side + 1])

        def frame(
            k: int, rgb: Image.Image = rgb, side: int = side, start: np.ndarray = start, end: np.ndarray = end
        ) -> np.ndarray:
            x, y = (start + (end - start) * k / (FRAMES - 1)).astype(int)
            return np.asarray(rgb.crop((x, y, x + side, y + side)).resize((SIZE, SIZE), Image.Resampling.BILINEAR))

        yield _clip(frame)


def moving_shapes(rng: np.random.Generator, n: int) -> Iterator[Media]:
    """1-3 filled ellipses, rectangles or triangles of random colours crossing a plain background."""
    for _ in range(n):
        background = tuple(int(c) for c in rng.integers(0, 256, 3))
        shapes = [
            (
                int(rng.integers(3)),
                tuple(int(c) for c in rng.integers(0, 256, 3)),
                rng.integers(8, 28),
                rng.uniform(0, SIZE, (2, 2)),
            )
            for _ in range(rng.integers(1, 4))
        ]

        def frame(k: int, background: tuple[int, ...] = background, shapes: list[tuple[Any, ...]] = shapes) -> np.ndarray:
            image = Image.new("RGB", (SIZE, SIZE), background)
            draw = ImageDraw.Draw(image)
            for kind, colour, size, (a, b) in shapes:
                x, y = a + (b - a) * k / (FRAMES - 1)
                box = (x - size / 2, y - size / 2, x + size / 2, y + size / 2)
                if kind == 0:
                    draw.ellipse(box, fill=colour)
                elif kind == 1:
                    draw.rectangle(box, fill=colour)
                else:
                    draw.polygon([(x, y - size / 2), (x - size / 2, y + size / 2), (x + size / 2, y + size / 2)], fill=colour)
            return np.asarray(image)

        yield _clip(frame)


def gratings(rng: np.random.Generator, n: int) -> Iterator[Media]:
    """Drifting sine gratings (every other item) and checkerboards, grey, at random orientation and period."""
    y, x = np.mgrid[:SIZE, :SIZE].astype(np.float64)
    for i in range(n):
        period, angle, speed = rng.uniform(4, 24), rng.uniform(0, np.pi), rng.uniform(0.5, 3)
        u = x * np.cos(angle) + y * np.sin(angle)
        v = -x * np.sin(angle) + y * np.cos(angle)
        if i % 2 == 0:
            draw = [127.5 * (1 + np.sin(2 * np.pi * (u + speed * k) / period)) for k in range(FRAMES)]
        else:
            draw = [255.0 * ((np.floor((u + speed * k) / period) + np.floor(v / period)) % 2) for k in range(FRAMES)]
        yield np.repeat(np.stack(draw)[..., None], 3, axis=-1).astype(np.uint8)


# --- the sets -----------------------------------------------------------------------------


def _spoken(make: Callable[[np.random.Generator, int], Iterator[Media]], group: Group, count: int, about: str) -> Kind:
    """A near kind of speech, written as AV-digits writes its recordings (8 kHz, noised)."""
    return Kind(make, "audio", group, "near", count, f"{about}, 8 kHz, noised as AV-digits' clips", rate=SAMPLE_RATE)


KINDS: tuple[Kind, ...] = (
    # tune: for choosing, later; never reported
    _spoken(espeak_letters, "tune", 50, "letter names (a, bee, see, ...) spoken by espeak-ng"),
    Kind(white_noise, "audio", "tune", "far", 20, "white Gaussian noise, peak 0.1-0.9"),
    Kind(pure_tones, "audio", "tune", "far", 20, "one sine, 80 Hz-4 kHz, amplitude 0.1-0.9"),
    Kind(greek_letters, "video", "tune", "near", 40, "Greek letters unlike Latin ones, drawn as AV-digits draws digits"),
    Kind(gratings, "video", "tune", "far", 20, "drifting sine gratings and checkerboards"),
    # report, near
    _spoken(espeak_words, "report", 60, "common English words, no digit, spoken by espeak-ng"),
    _spoken(espeak_sentences, "report", 30, "digit-free sentences by espeak-ng (the model hears the first second)"),
    _spoken(grid_speech, "report", 22, "GRID's real speech, the 1-s windows before and after its spoken digit"),
    Kind(latin_letters, "video", "report", "near", 48, "Latin letters (not O, o, I, l) in DejaVu fonts, drawn as digits are"),
    Kind(symbols, "video", "report", "near", 24, "ASCII symbols (+ - = * # @ % & ? ! ...), drawn as digits are"),
    Kind(strokes, "video", "report", "near", 40, "handwriting-like Bezier scribbles of a pen's width, no digit"),
    Kind(faces, "video", "report", "near", 40, "LFW faces (scikit-image's bundled crops) in the digit's frame"),
    Kind(grid_faces, "video", "report", "near", 33, "GRID's real talking faces, 1-s windows at 360x288, 25 fps", GRID_FPS),
    # report, far
    Kind(coloured_noise, "audio", "report", "far", 40, "pink, brown, blue and violet noise, peak 0.1-0.9"),
    Kind(chords, "audio", "report", "far", 20, "three- and four-note chords with harmonics and decay"),
    Kind(silence, "audio", "report", "far", 10, "digital silence and near-silence (-80 to -60 dBFS)"),
    Kind(dc, "audio", "report", "far", 10, "a constant offset of 0.05-0.9 full scale, either sign"),
    Kind(clipped, "audio", "report", "far", 20, "sines and noise amplified 10-100x and clipped at full scale"),
    Kind(constant_frames, "video", "report", "far", 20, "one colour throughout (black, white, random)"),
    Kind(noise_frames, "video", "report", "far", 21, "uniform RGB, Gaussian grey and salt-and-pepper noise, new each frame"),
    Kind(photos, "video", "report", "far", 40, "slow pans over natural photographs (scikit-image's data module)"),
    Kind(moving_shapes, "video", "report", "far", 30, "coloured ellipses, rectangles, triangles crossing a plain background"),
)  # fmt: skip


def shared_between_groups(kinds: Iterable[Kind]) -> set[str]:
    """Kinds (builders) found in both groups: none may be."""
    kinds = list(kinds)
    return {k.name for k in kinds if k.group == "tune"} & {k.name for k in kinds if k.group == "report"}


def _check_disjoint(kinds: tuple[Kind, ...]) -> None:
    if shared := shared_between_groups(kinds):
        raise ValueError(f"in both the tune and the report group: {sorted(shared)}")
    if len({k.name for k in kinds}) != len(kinds):
        raise ValueError("a builder is listed twice")


_check_disjoint(KINDS)


def kind_seed(seed: int, kind: Kind) -> np.random.Generator:
    """The kind's own stream: its items depend on the seed and its name only."""
    return np.random.default_rng([seed, zlib.crc32(kind.name.encode())])


def build(out: Path, seed: int = 0, per_kind: int | None = None, kinds: Iterable[Kind] = KINDS) -> Path:
    """Write every kind's items under `out`/KIND/ and list them in `out`/items.csv; return its path.

    `per_kind`: at most that many items of each kind (a small build, for tests).
    """
    rows = []
    for kind in kinds:
        n = kind.count if per_kind is None else min(per_kind, kind.count)
        folder = out / kind.name
        folder.mkdir(parents=True, exist_ok=True)
        written = 0
        for i, media in enumerate(itertools.islice(kind.make(kind_seed(seed, kind), n), n)):
            if kind.modality == "audio":
                path = folder / f"{i:03d}.wav"
                write_audio(path, np.asarray(media, np.float32), kind.rate)
            else:
                path = folder / f"{i:03d}.mp4"
                write_video(path, media, kind.fps, codec="mpeg4")
            rows.append([str(path.relative_to(out)), kind.modality, kind.name, kind.group, kind.distance])
            written += 1
        log.info("%s: %d items", kind.name, written)
    manifest = out / "items.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "modality", "kind", "group", "distance"])
        writer.writerows(rows)
    return manifest


def read_items(manifest: Path) -> list[Item]:
    with manifest.open(newline="") as f:
        return [Item(manifest.parent / r["path"], r["modality"], r["kind"], r["group"], r["distance"]) for r in csv.DictReader(f)]  # type: ignore[arg-type]


def digest(items: list[Item]) -> str:
    """sha256 over every item's kind, name and bytes: what a cache of anything computed from the items is keyed by.
    The items.csv alone would not do: two versions of the sets list the same names (version 2 changed only bytes)."""
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.kind}/{it.path.name}\0{sha256_file(it.path)}\0".encode())
    return h.hexdigest()


def cached(seed: int = 0) -> Path:
    """The sets' items.csv in the cache (`MLA_CACHE_DIR`), built on first use, into a temporary folder
    moved into place when complete: an interrupted build is never mistaken for a finished one."""
    out = cache_root() / "ood" / f"sets-v{VERSION}-seed{seed}"
    return built_once(out, "items.csv", lambda folder: build(folder, seed), "the OOD sets")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, nargs="?", help="where to write them (default: the cache, built once)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(build(args.out, args.seed) if args.out else cached(args.seed))
    except MissingToolError as exc:
        raise SystemExit(f"cannot build the OOD sets: {exc}") from exc


if __name__ == "__main__":
    main()

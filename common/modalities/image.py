"""Image: a still image (PNG, JPEG or WebP) -> uint8 RGB [size, size, 3].

Decoded by Pillow in the decode worker: the header is read first, and a format other than the three,
or a size past the server's pixel bound, is refused before any pixel is decoded (a PNG that claims
100000 x 100000 costs its few bytes). A JPEG is decoded at the smallest of its DCT scales that still
covers the model's size (Pillow's draft mode); an animated WebP gives its first frame. The image is
stretched to the model's square size as it is converted to RGB (an alpha channel composited on black,
the background the drawings were trained on): a batch needs one shape, so the size is fixed before the
graph. Inside the graph: the pixels normalised by a fixed mean and standard deviation, then the trunk.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from common.media import source_name
from common.media_types import DecodeError, ImageSpec, Limits, MediaLimitError, UnsupportedFormatError
from common.modalities.base import EntryBase, Kind, Settings, Source

FORMATS = frozenset({"PNG", "JPEG", "WEBP"})  # Pillow's names for them


def load_image(source: Source, spec: ImageSpec, limits: Limits, formats: frozenset[str] | None = FORMATS) -> np.ndarray:
    """Decode a still image: uint8 RGB [height, width, 3], stretched to the spec's size.

    `formats`: the Pillow formats accepted (None: any Pillow opens, for training data)."""
    from PIL import Image, UnidentifiedImageError

    name = source_name(source)
    if hasattr(source, "seek"):
        source.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our bound below decides
            im = Image.open(source, formats=None if formats is None else sorted(formats))
    except Image.DecompressionBombError as exc:
        raise MediaLimitError(f"{name} declares more pixels than any limit allows ({exc})") from None
    except UnidentifiedImageError:
        accepted = ", ".join(sorted(formats or FORMATS))
        raise UnsupportedFormatError(f"{name} is not an image in an accepted format ({accepted})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DecodeError(f"{name}: cannot read the image: {exc}") from None
    with im:
        width, height = im.size
        if width < 1 or height < 1:
            raise DecodeError(f"{name}: the image is {width}x{height}")
        if limits.max_pixels is not None and width * height > limits.max_pixels:
            raise MediaLimitError(f"{name} is {width}x{height}, more than {limits.max_pixels} pixels")
        try:
            if im.format == "JPEG":
                im.draft("RGB", (spec.width, spec.height))  # decode at the smallest DCT scale at least this size
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.load()
            rgb = _rgb(im)
            out = rgb.resize((spec.width, spec.height), Image.Resampling.BILINEAR, reducing_gap=2.0)
        except Image.DecompressionBombError as exc:
            raise MediaLimitError(f"{name}: {exc}") from None
        except MemoryError:
            raise MediaLimitError(f"{name} needs more memory to decode than the limit allows") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise DecodeError(f"{name}: cannot decode the image: {exc}") from None
        return np.asarray(out, dtype=np.uint8).copy()


def _rgb(im: Any) -> Any:
    """RGB, an alpha channel composited on black."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return im.convert("RGB")


class ImageEntry(EntryBase):
    kind: Literal["image"] = "image"
    height: int
    width: int
    pixel_format: Literal["rgb24"] = "rgb24"
    resize: Literal["stretch"] = "stretch"  # the whole image scaled to height x width, aspect not kept


class Image(Kind):
    name = "image"
    entry = ImageEntry
    input_name = "pixels"
    accept = "image/png,image/jpeg,image/webp"
    description = "an image file (PNG, JPEG or WebP)"
    formats = FORMATS
    encoder_class = "training.models.encoders:ImageEncoder"
    augmentation_class = "training.models.augment:FrameAffine"  # one random turn, scale, shear and shift per clip

    def defaults(self, encoder: str) -> Settings:
        if encoder == "resnet18":
            return {"size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
        return {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}

    def check(self, settings: Mapping[str, Any]) -> None:
        if settings["size"] < 8:
            raise ValueError(f"an image of {settings['size']} pixels a side is too small for the trunk's four poolings")

    def spec(self, settings: Mapping[str, Any]) -> ImageSpec:
        size = int(settings["size"])
        return ImageSpec(height=size, width=size)

    def input(self, settings: Mapping[str, Any]) -> tuple[Literal["float32", "uint8"], tuple[int, ...]]:
        size = int(settings["size"])
        return "uint8", (size, size, 3)

    def entry_fields(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        size = int(settings["size"])
        return {"height": size, "width": size}

    def settings_from_entry(self, entry: Any) -> Settings:
        if entry.height != entry.width:
            raise ValueError(f"images of {entry.height}x{entry.width}; the data sets decode square images")
        return {"size": entry.height}

    def decode(self, source: Source, spec: ImageSpec, limits: Limits, formats: frozenset[str] | None = None) -> np.ndarray:
        return load_image(source, spec, limits, formats)

    def limits(self, server: Any) -> Limits:
        return Limits(max_pixels=server.max_image_pixels, max_streams=server.max_streams)


KIND = Image()

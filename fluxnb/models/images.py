"""Pictures a user gives (init images, masks, control images): checked before anything loads (exists, a regular
file, an image PIL can read, of sane size) and read as 8-bit pictures the pipelines take."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import RequestError
from ..core.userfiles import describe_path

EXIF_ORIENTATION = 0x0112  # the EXIF tag; values 5-8 turn the picture by a quarter
MAX_INIT_IMAGE_PIXELS = 64_000_000  # a picture is resized to width x height; larger files are refused unread


def _open_image(name: str, file: Path):
    """PIL's lazy open (header only), with its decompression-bomb guard turned into a clear refusal."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    fix = "Fix: give a PNG or JPEG file."
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file)
    except Image.DecompressionBombError as exc:
        raise RequestError(name, f"file {str(file)!r} is too large to decode safely ({exc}). Fix: downscale it "
                           "(it is resized to width x height anyway).") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise RequestError(name, f"file {str(file)!r} is not an image that can be read ({exc}). {fix}") from None
    width, height = image.size
    if width * height > MAX_INIT_IMAGE_PIXELS:
        image.close()
        raise RequestError(name, f"file {str(file)!r} is {width}x{height} pixels ({width * height / 1e6:.0f} "
                           f"megapixels); the limit is {MAX_INIT_IMAGE_PIXELS / 1e6:.0f} megapixels. Fix: downscale "
                           "it (it is resized to width x height anyway).")
    return image


def check_image_file(name: str, path: Any) -> str:
    """An existing regular file that PIL can read as an image of sane size; its path as a string."""
    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise RequestError(name, f"must be the path of an image file, got {str(path)[:100]!r}.")
    file = Path(path).expanduser()
    problem = describe_path(file)
    if problem:
        where = "(relative paths are taken from the working directory)" if file.is_absolute() else \
            f"(looked for as {str(file.absolute())!r}: relative paths are read from the working directory " \
            f"{str(Path.cwd())!r})"
        raise RequestError(name, f"{str(file)!r} {problem}. Fix: give the path of a PNG or JPEG file {where}.")
    with _open_image(name, file) as image:
        try:
            image.verify()
        except (OSError, SyntaxError, ValueError) as exc:
            raise RequestError(name, f"file {str(file)!r} is not an image that can be read ({exc}). "
                               "Fix: give a PNG or JPEG file.") from None
    return str(file)


def picture_size(name: str, path: str | Path) -> tuple[int, int]:
    """The size of the picture load_image_file returns, read from the file's header and EXIF orientation (a
    quarter turn swaps width and height), without decoding the pixels."""
    with _open_image(name, Path(check_image_file(name, path))) as image:
        width, height = image.size
        turned = image.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8)
    return (height, width) if turned else (width, height)


def load_image_file(name: str, path: str | Path):
    """The picture an init image shows, as 8-bit RGB: EXIF orientation applied (a phone photo stands upright)
    and 16-bit data scaled to 8 bits (a plain convert("RGB") would clip nearly every pixel to white).

    Returns:
        PIL.Image.Image: an RGB image, EXIF orientation applied, 16-bit data scaled to 8 bits.

    Raises:
        RequestError: the file is missing, not a regular file, not an image, or too large (named, with the fix).
    """
    import numpy as np
    from PIL import Image, ImageOps

    file = Path(check_image_file(name, path))
    with _open_image(name, file) as image:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise RequestError(name, f"file {str(file)!r} cannot be decoded ({exc}). Fix: give a PNG or JPEG "
                               "file.") from None
        upright = ImageOps.exif_transpose(image)
        if upright.mode.startswith("I") or upright.mode == "F":
            values = np.asarray(upright, dtype=np.float64)
            top = 65535.0 if upright.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
            if upright.mode == "F":
                top = 1.0 if values.max(initial=0) <= 1.0 else values.max()
            eight = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
            upright = Image.fromarray(eight, mode="L")
        return upright.convert("RGB")

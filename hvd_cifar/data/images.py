"""Any image file -> the 32x32 RGB a CIFAR-10 record holds (convert and predict read images
with it)."""
import io
import os
import stat

import numpy as np
from PIL import Image

from hvd_cifar.command import UserError, first_line
from hvd_cifar.data.records import ORIGINAL_SIZE

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")

# Larger images are refused before decoding: a CIFAR image is 32x32, and decoding takes several
# bytes a pixel.
MAX_IMAGE_PIXELS = 40_000_000
# Larger files are refused before they are read, so no input makes a reader hold more.
MAX_IMAGE_BYTES = 64 << 20


def size_problem(size):
    """Why an image file of size bytes is refused unread, or None."""
    if size > MAX_IMAGE_BYTES:
        return (f"{size:,} bytes is more than an image may have ({MAX_IMAGE_BYTES:,}); shrink "
                "it first (the network reads 32x32 images)")
    return None


def read_image_file(path):
    """The bytes of the image file at path: only a regular file (not a FIFO or device, which
    could block or never end) of at most MAX_IMAGE_BYTES; a UserError saying why not."""
    try:
        with open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK)) \
                as f:
            status = os.fstat(f.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise UserError("not a regular file (a FIFO, device or folder is not read)")
            problem = size_problem(status.st_size)
            if problem:
                raise UserError(problem)
            return f.read(MAX_IMAGE_BYTES + 1)
    except OSError as error:
        raise UserError(f"cannot be read: {error.strerror}") from None


def to_rgb8(image):
    """A PIL image of any mode as 8-bit RGB: 16- and 32-bit values scaled (not clipped) to 8
    bits, grayscale and palettes expanded, transparent pixels laid over white."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        # 16-bit data spans 0..65535; 32-bit integer or float images are read by the range
        # their values use (0..1, 0..255 or 16-bit).
        if image.mode.startswith("I;16") or values.max() > 255:
            full_scale = 65535.0
        elif image.mode == "F" and values.max() <= 1.0:
            full_scale = 1.0
        else:
            full_scale = 255.0
        scaled = np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def decode_to_cifar(raw):
    """Any PIL-readable image -> uint8 32x32x3 (see to_rgb8; resized with antialiasing when it
    is not 32x32). An image above MAX_IMAGE_PIXELS is a UserError, found before decoding."""
    try:
        opened = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError:  # PIL's own limit, far above ours
        raise UserError(f"larger than {MAX_IMAGE_PIXELS:,} pixels; shrink it first (the network "
                        "reads 32x32 images)") from None
    except Image.UnidentifiedImageError:
        raise UserError("not a readable image (no image format PIL knows)") from None
    except Exception as error:  # a header PIL recognises but cannot parse
        raise UserError(f"not a readable image ({type(error).__name__}: "
                        f"{first_line(error, 'unreadable')})") from None
    with opened as image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise UserError(f"{width}x{height} is larger than {MAX_IMAGE_PIXELS:,} pixels; "
                            "shrink it first (the network reads 32x32 images)")
        try:
            image = to_rgb8(image)
            if image.size != (ORIGINAL_SIZE, ORIGINAL_SIZE):
                image = image.resize((ORIGINAL_SIZE, ORIGINAL_SIZE), Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8)
        except UserError:
            raise
        except Exception as error:  # PIL raises many kinds for a damaged image
            raise UserError(f"not a readable image ({type(error).__name__}: "
                            f"{first_line(error, 'unreadable')})") from None


def read_image(path):
    """uint8 [32, 32, 3]; a UserError naming the file when it cannot be read as an image."""
    try:
        return decode_to_cifar(read_image_file(path))
    except UserError as error:
        raise UserError(f"{path}: {error}") from None

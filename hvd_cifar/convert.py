"""Image folders -> the CIFAR-10 binary layout, and any image file -> the 32x32 RGB the network
reads (used by predict too).

    python -m hvd_cifar.data convert SRC OUT [--test_fraction F] [--seed S] [--skip_bad]
"""
import dataclasses
import io
import os
import sys
import tarfile

import numpy as np
from PIL import Image

from hvd_cifar.config import UserError, argument, first_line, flag, fraction
from hvd_cifar.data import (BATCHES_DIR, META_FILE, NUM_CLASSES, ORIGINAL_SIZE, TEST_FILES,
                            TRAIN_FILES, write_records)
from hvd_cifar.files import staged_folder


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def list_image_tree(source):
    """{split: [(class name, file name)]} of a class-folder tree, from a folder or a tar file.

    Layouts: SRC/train/<class>/*, SRC/test/<class>/* (test/ may be missing), or SRC/<class>/*;
    a tar archive may wrap the tree in one top folder. Images elsewhere (nested deeper, or
    loose) and class folders without images are skipped with a warning on stderr.
    """
    if os.path.isdir(source):
        names = [os.path.relpath(os.path.join(folder, f), source)
                 for folder, _, files in os.walk(source) for f in files]
        folders = [os.path.relpath(folder, source) for folder, _, _ in os.walk(source)]
    elif os.path.isfile(source) and tarfile.is_tarfile(source):
        with tarfile.open(source) as tar:
            members = tar.getmembers()
        names = [member.name for member in members if member.isfile()]
        folders = [member.name for member in members if member.isdir()]
    else:
        raise UserError(f"{source}: neither a folder nor a tar archive of images")
    names = [name for name in names if name.lower().endswith(IMAGE_SUFFIXES)]
    parts = [name.split("/") for name in names]
    tops = {p[0] for p in parts}
    wrapped = len(tops) == 1 and all(len(p) >= 3 for p in parts) and not tops & {"train", "test"}
    tree = {"train": [], "test": []}
    skipped = []
    for name, path in zip(names, parts):
        path = path[1:] if wrapped else path
        if len(path) == 3 and path[0] in tree:
            tree[path[0]].append((path[1], name))
        elif len(path) == 2 and path[0] not in tree:
            tree["train"].append((path[0], name))
        else:
            skipped.append(name)
    if not tree["train"]:
        raise UserError(f"{source}: no images in class folders (expected "
                        "train/<class>/*.png|jpg, test/<class>/*, or <class>/*)")
    if skipped:
        print(f"hvd_cifar: warning: skipped {len(skipped)} image"
              f"{'s' if len(skipped) > 1 else ''} outside class folders: "
              + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""), file=sys.stderr)
    for folder in sorted(empty_class_folders(folders, names, wrapped)):
        print(f"hvd_cifar: warning: class folder {folder} holds no images; it is not a class",
              file=sys.stderr)
    return tree


def empty_class_folders(folders, image_names, wrapped):
    """Folders where a class folder belongs (train/X, test/X, or X) that hold no image."""
    holding = set()
    for name in image_names:
        parts = name.split("/")[:-1]
        holding.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    empty = []
    for folder in folders:
        parts = folder.strip("/").split("/")
        inner = parts[1:] if wrapped else parts
        is_class_folder = (len(inner) == 2 and inner[0] in ("train", "test")) or (
            len(inner) == 1 and inner[0] not in ("train", "test", "."))
        if is_class_folder and folder.strip("/") not in holding:
            empty.append(folder.strip("/"))
    return empty


def image_bytes(source, wanted):
    """(name, bytes) for every name in wanted: a tar archive in one pass in its own order
    (a .tar.gz cannot seek cheaply), a folder file by file. A file of a folder that cannot be
    read (a dangling symbolic link, a link loop) comes as (name, the OSError)."""
    if os.path.isdir(source):
        for name in wanted:
            try:
                with open(os.path.join(source, name), "rb") as f:
                    yield name, f.read()
            except OSError as error:
                yield name, error
        return
    with tarfile.open(source) as tar:
        for member in tar:
            if member.name in wanted:
                yield member.name, tar.extractfile(member).read()


# Larger images are refused before decoding: a CIFAR image is 32x32, and decoding takes several
# bytes a pixel (a 12000x12000 photograph took 1.6 GB).
MAX_IMAGE_PIXELS = 40_000_000


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
    with opened as image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise UserError(f"{width}x{height} is larger than {MAX_IMAGE_PIXELS:,} pixels; "
                            "shrink it first (the network reads 32x32 images)")
        image = to_rgb8(image)
        if image.size != (ORIGINAL_SIZE, ORIGINAL_SIZE):
            image = image.resize((ORIGINAL_SIZE, ORIGINAL_SIZE), Image.Resampling.LANCZOS)
        return np.asarray(image, dtype=np.uint8)


def convert(source, out_dir, test_fraction=None, seed=0, skip_bad=False):
    """Write out_dir/cifar-10-batches-bin from a class-folder tree; (train, test) counts.

    Nothing is written unless every image decodes (or skip_bad is set): the folder appears by
    one rename of a complete staging copy."""
    tree = list_image_tree(source)
    class_list = sorted({name for name, _ in tree["train"]})
    if len(class_list) > NUM_CLASSES:
        raise UserError(f"{source}: {len(class_list)} classes; the network has "
                        f"{NUM_CLASSES} outputs")
    unknown = sorted({name for name, _ in tree["test"]} - set(class_list))
    if unknown:
        raise UserError(f"{source}: test classes {unknown} have no training images")
    rng = np.random.default_rng(seed)
    if not tree["test"]:
        if not test_fraction:
            raise UserError(f"{source} has no test/ folder: pass --test_fraction (e.g. 0.1)")
        order = rng.permutation(len(tree["train"]))
        num_test = int(round(test_fraction * len(order)))
        tree = {"test": [tree["train"][i] for i in order[:num_test]],
                "train": [tree["train"][i] for i in order[num_test:]]}
    destination = os.path.join(out_dir, BATCHES_DIR)
    if os.path.exists(destination):
        raise UserError(f"{destination} already exists; remove it or choose another OUT")

    pixels, bad = {}, []
    wanted = {name for members in tree.values() for _, name in members}
    for name, raw in image_bytes(source, wanted):
        if isinstance(raw, OSError):
            bad.append(f"{name} (cannot be read: {raw.strerror})")
            continue
        try:
            pixels[name] = decode_to_cifar(raw)
        except UserError as error:
            bad.append(f"{name} ({error})")
        except Exception as error:  # PIL raises many kinds for a bad file
            bad.append(f"{name} ({type(error).__name__}: {first_line(error, 'unreadable')})")
    decoded = {split: ([pixels[name] for _, name in members if name in pixels],
                       [class_list.index(c) for c, name in members if name in pixels])
               for split, members in tree.items()}
    for line in bad:
        print(f"hvd_cifar: bad image: {line}", file=sys.stderr)
    if bad and not skip_bad:
        raise UserError(f"{len(bad)} images in {source} cannot be read (listed above); fix "
                        "them or pass --skip_bad; nothing was written")

    with staged_folder(destination) as staging:
        for split, files in (("train", TRAIN_FILES), ("test", TEST_FILES)):
            images, labels = decoded[split]
            if not images:
                raise UserError(f"{source}: no readable {split} images")
            images, labels = np.stack(images), np.asarray(labels)
            order = rng.permutation(len(images))  # mixed classes, as in the real batch files
            for name, part in zip(files, np.array_split(order, len(files))):
                write_records(os.path.join(staging, name), images[part], labels[part])
        with open(os.path.join(staging, META_FILE), "w") as f:
            f.write("\n".join(class_list) + "\n")
    return len(decoded["train"][0]), len(decoded["test"][0]), len(bad)


@dataclasses.dataclass
class ConvertConfig:
    source: str = argument("folder or tar(.gz) with train/<class>/*, test/<class>/* "
                           "(or <class>/*)", metavar="SRC")
    out_dir: str = argument("writes OUT/cifar-10-batches-bin/; train with --data_dir OUT",
                            metavar="OUT")
    test_fraction: float = flag(None, "share of the images held out as the test set when SRC "
                                "has no test/ folder", fraction)
    seed: int = flag(0, "seed of the record order")
    skip_bad: bool = flag(False, "skip unreadable images instead of stopping")


def run(config):
    num_train, num_test, num_bad = convert(config.source, config.out_dir, config.test_fraction,
                                           config.seed, config.skip_bad)
    print(f"{os.path.join(config.out_dir, BATCHES_DIR)}: {num_train} training and "
          f"{num_test} test records" + (f"; {num_bad} bad images skipped" if num_bad else ""))

"""Image folders -> the CIFAR-10 binary layout.

    python -m hvd_cifar.data convert SRC OUT [--test_fraction F] [--seed S] [--skip_bad]
"""
import dataclasses
import os
import sys
import tarfile

import numpy as np

from hvd_cifar.command import UserError, argument, flag, fraction, seed_int
from hvd_cifar.data.images import (IMAGE_SUFFIXES, decode_to_cifar, read_image_file,
                                   size_problem)
from hvd_cifar.data.records import (BATCHES_DIR, META_FILE, NUM_CLASSES, TEST_FILES, TRAIN_FILES,
                                    write_records)
from hvd_cifar.files import staged_folder


def list_image_tree(source):
    """{split: [(class name, file name)]} of a class-folder tree, from a folder or a tar file.

    Layouts: SRC/train/<class>/*, SRC/test/<class>/* (test/ may be missing), or SRC/<class>/*;
    a tar archive may wrap the tree in one top folder. Images elsewhere (nested deeper, or
    loose) and class folders without images are skipped with a warning on stderr.
    """
    if os.path.isdir(source):
        names, folders = walk_folder(source)
    elif os.path.isfile(source) and tarfile.is_tarfile(source):
        with tarfile.open(source) as tar:
            members = tar.getmembers()
        names = [member.name for member in members if member.isfile()]
        folders = [member.name for member in members if member.isdir()]
        links = [member.name for member in members if member.islnk() or member.issym()]
        if links:
            raise UserError(f"{source} holds {len(links)} link entr"
                            f"{'ies' if len(links) > 1 else 'y'} ({', '.join(links[:3])}"
                            f"{' ...' if len(links) > 3 else ''}), which are not read: "
                            "archive the files themselves (tar without --hard-dereference "
                            "stores a file seen twice as a link)")
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


def walk_folder(source):
    """(file paths, folder paths) under source, relative to it. A linked folder is followed
    (once, whatever links lead to it again) and said on stderr; a folder that cannot be read
    is a UserError: its images would be left out without a word."""
    names, folders, seen = [], [], set()

    def unreadable(error):
        raise UserError(f"{error.filename}: cannot be read ({error.strerror}); "
                        "nothing was written")

    for folder, subfolders, files in os.walk(source, onerror=unreadable, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        relative = os.path.relpath(folder, source)
        if os.path.islink(folder):
            print(f"hvd_cifar: note: {relative} is a link to {real}; its images are read",
                  file=sys.stderr)
        folders.append(relative)
        names += [os.path.normpath(os.path.join(relative, f)) for f in files]
    return names, folders


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
                yield name, read_image_file(os.path.join(source, name))
            except UserError as error:
                yield name, error
        return
    with tarfile.open(source) as tar:
        for member in tar:
            if member.name in wanted:
                problem = size_problem(member.size)
                yield member.name, (UserError(problem) if problem else
                                    tar.extractfile(member).read())


def convert(source, out_dir, test_fraction=None, seed=0, skip_bad=False):
    """Write out_dir/cifar-10-batches-bin from a class-folder tree; the counts of training
    and test records written and of bad images skipped.

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
        if isinstance(raw, UserError):
            bad.append(f"{name} ({raw})")
            continue
        try:
            pixels[name] = decode_to_cifar(raw)
        except UserError as error:
            bad.append(f"{name} ({error})")
    decoded = {split: ([pixels[name] for _, name in members if name in pixels],
                       [class_list.index(c) for c, name in members if name in pixels])
               for split, members in tree.items()}
    for line in bad:
        print(f"hvd_cifar: bad image: {line}", file=sys.stderr)
    if bad and not skip_bad:
        raise UserError(f"{len(bad)} image{'s' if len(bad) != 1 else ''} in {source} cannot be "
                        "read (listed above); fix "
                        "them or pass --skip_bad; nothing was written")

    try:
        write_batches(destination, decoded, class_list, rng, source)
    except OSError as error:
        if os.path.isdir(destination):  # another convert to the same OUT finished first
            raise UserError(f"{destination} was written by another convert meanwhile; it is "
                            "kept, and nothing of this one was written") from None
        raise UserError(f"{destination}: cannot be written ({error.strerror})") from None
    return len(decoded["train"][0]), len(decoded["test"][0]), len(bad)


def write_batches(destination, decoded, class_list, rng, source):
    """The batch files and class names of decoded images, in a folder that appears whole."""
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


@dataclasses.dataclass
class ConvertConfig:
    source: str = argument("folder or tar(.gz) with train/<class>/*, test/<class>/* "
                           "(or <class>/*)", metavar="SRC")
    out_dir: str = argument("writes OUT/cifar-10-batches-bin/; train with --data_dir OUT",
                            metavar="OUT")
    test_fraction: float = flag(None, "share of the images held out as the test set when SRC "
                                "has no test/ folder", fraction)
    seed: int = flag(0, "seed of the record order", seed_int)
    skip_bad: bool = flag(False, "skip unreadable images instead of stopping")


def run(config):
    num_train, num_test, num_bad = convert(config.source, config.out_dir, config.test_fraction,
                                           config.seed, config.skip_bad)
    print(f"{os.path.join(config.out_dir, BATCHES_DIR)}: {num_train} training and "
          f"{num_test} test records" + (f"; {num_bad} bad images skipped" if num_bad else ""))

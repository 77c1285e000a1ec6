"""How sensitive a trained network is to the JPEG compression of the CIFAR-10 copy it learnt on.

    python tools/jpeg_sensitivity.py WEIGHTS [--archive ../shared/data/cifar10-jpeg.tar.gz]
        [--qualities 90,50] [--json OUT.json]

WEIGHTS is an .h5 of moving-average weights (hvd_cifar/weights/, `export --weights`) or a
train_dir (its newest checkpoint's moving averages). The copy stores every image as a JPEG
file; the official CIFAR-10 stores raw bytes, which cannot be downloaded here. So this measures
what can be measured: the copy's own compression (its quality, estimated from each file's
luminance quantization table against the IJG table that libjpeg scales), and the precision @ 1
on the 10,000 test images as stored, after one more round of the very same compression
(Pillow's quality="keep": same tables and subsampling), and re-compressed at lower qualities.
Prints a Markdown table and the JSON.
"""
import argparse
import io
import json
import os
import statistics
import sys

import numpy as np
from PIL import Image, JpegImagePlugin

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hvd_cifar import checkpoint as checkpoint_lib, model as model_lib  # noqa: E402
from hvd_cifar.data import records
from hvd_cifar.data.convert import image_bytes, list_image_tree  # noqa: E402
from hvd_cifar.data.images import decode_to_cifar  # noqa: E402
from hvd_cifar.classifier import classifier  # noqa: E402

# The luminance table of the JPEG standard (Annex K), which libjpeg scales by the quality.
IJG_LUMINANCE = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
                 14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
                 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
                 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]


def estimated_quality(image):
    """libjpeg's quality setting that gives this luminance table (the inverse of its scaling;
    the order of the 64 values does not matter for their sum)."""
    scale = 100.0 * sum(image.quantization[0]) / sum(IJG_LUMINANCE)
    return round((200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale)


def test_images(archive):
    """(labels, JPEG bytes) of every test image, read the way convert reads the tree."""
    class_of = {name: class_name for class_name, name in list_image_tree(archive)["test"]}
    labels, raws = [], []
    for name, raw in image_bytes(archive, set(class_of)):
        labels.append(records.CIFAR10_CLASSES.index(class_of[name]))
        raws.append(raw)
    return np.array(labels), raws


def recompress(raw, quality):
    with Image.open(io.BytesIO(raw)) as image:
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=quality)
        return out.getvalue()


def precision(probabilities, images, labels, batch=1000):
    predicted = np.concatenate([np.argmax(probabilities(images[i:i + batch]).numpy(), axis=1)
                                for i in range(0, len(images), batch)])
    return float(np.mean(predicted == labels))


def load(weights):
    """(classifier, the file its weights came from)."""
    if os.path.isdir(weights):
        path = checkpoint_lib.newest_or_refuse(weights)
        network, _ = checkpoint_lib.load_averaged_model(path)
        return classifier(network), path
    network = model_lib.inference()
    network.load_weights(weights)
    return classifier(network), weights


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights")
    parser.add_argument("--archive", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
        "cifar10-jpeg.tar.gz"))
    parser.add_argument("--qualities", default="90,50")
    parser.add_argument("--json")
    args = parser.parse_args()
    labels, raws = test_images(args.archive)
    qualities, subsamplings = [], set()
    for raw in raws:
        with Image.open(io.BytesIO(raw)) as image:
            qualities.append(estimated_quality(image))
            subsamplings.add({0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}.get(
                JpegImagePlugin.get_sampling(image), "other"))
    stored = np.stack([decode_to_cifar(raw) for raw in raws])
    probabilities, weights_file = load(args.weights)
    rows = [("as stored", stored, None)]
    once_more = np.stack([decode_to_cifar(recompress(raw, "keep")) for raw in raws])
    rows.append(("once more with the copy's own tables (quality=\"keep\")", once_more, None))
    for quality in (int(q) for q in args.qualities.split(",")):
        rows.append((f"re-compressed at quality {quality}",
                     np.stack([decode_to_cifar(recompress(raw, quality)) for raw in raws]),
                     quality))
    result = {"weights": weights_file, "test_images": len(raws),
              "quality_estimate": {"median": statistics.median(qualities),
                                   "min": min(qualities), "max": max(qualities)},
              "chroma_subsampling": sorted(subsamplings), "variants": []}
    print(f"{len(raws)} test images; estimated JPEG quality median "
          f"{result['quality_estimate']['median']} (min {min(qualities)}, max "
          f"{max(qualities)}); chroma subsampling {', '.join(sorted(subsamplings))}\n")
    print("| test images | mean abs. pixel change vs as stored | precision @ 1 | vs as stored |")
    print("|---|---|---|---|")
    values = [precision(probabilities, images, labels) for _, images, _ in rows]
    base = values[0]  # as stored
    for (label, images, quality), value in zip(rows, values):
        change = float(np.mean(np.abs(images.astype(np.int16) - stored.astype(np.int16))))
        result["variants"].append({"variant": label, "quality": quality, "precision_at_1": value,
                                   "mean_abs_pixel_change": change})
        print(f"| {label} | {change:.2f} | {value:.4f} | {100 * (value - base):+.2f} pts |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

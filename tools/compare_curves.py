"""Put the learning curves of several runs side by side: one PNG and one Markdown table.

    python tools/compare_curves.py OUT_PREFIX LABEL=TRAIN_DIR:GLOBAL_BATCH ... \
        [LABEL=points:IMAGES:PRECISION,IMAGES:PRECISION,...]

Each TRAIN_DIR holds the eval_curve.json of `python -m hvd_cifar.evaluate --all_checkpoints`.
Curves are drawn against images seen (steps x global batch), so runs of different global
batches compare at the same amount of data. A `points:` entry is a published figure (e.g. the
tutorial's) drawn as markers. Writes OUT_PREFIX.png and OUT_PREFIX.md (a table of precision @ 1
by images seen, each run beside the first, in points of difference).
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(out_prefix, runs):
    curves, published = {}, set()
    for run in runs:
        label, rest = run.split("=", 1)
        if rest.startswith("points:"):
            # Published figures: one "step" is one image, so global batch 1.
            curves[label] = (1, [{"global_step": int(images), "precision_at_1": float(value)}
                                 for images, value in (point.split(":") for point in
                                                       rest[len("points:"):].split(","))])
            published.add(label)
            continue
        train_dir, global_batch = rest.rsplit(":", 1)
        with open(os.path.join(train_dir, "eval_curve.json")) as f:
            curves[label] = (int(global_batch), json.load(f))
    figure, axes = plt.subplots(figsize=(8, 5))
    # The colour cycle repeats after its length: past it, the line style tells runs apart.
    run_styles = ["o-", "s--", "^:"]
    colours = len(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for index, (label, (global_batch, curve)) in enumerate(curves.items()):
        axes.plot([c["global_step"] * global_batch / 1e6 for c in curve],
                  [c["precision_at_1"] for c in curve],
                  "D" if label in published else run_styles[index // colours % len(run_styles)],
                  markersize=8 if label in published else 4, label=label)
    axes.set_xlabel("images seen (millions)")
    axes.set_ylabel("precision @ 1 (moving averages, 10,000 test images)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")  # learning curves leave it empty
    figure.tight_layout()
    figure.savefig(f"{out_prefix}.png", dpi=100)
    # One row per number of images seen; each run's precision there, and how far it is from
    # the first run's (the reference) at the same images.
    by_images = {label: {c["global_step"] * global_batch: c["precision_at_1"] for c in curve}
                 for label, (global_batch, curve) in curves.items()}
    reference, *others = curves
    lines = ["| images seen | " + " | ".join([reference] + [f"{label} (vs {reference})"
                                                            for label in others]) + " |",
             "|---" * (len(curves) + 1) + "|"]
    for images in sorted(set().union(*by_images.values())):
        base = by_images[reference].get(images)
        cells = [f"{base:.4f}" if base is not None else ""]
        for label in others:
            value = by_images[label].get(images)
            cells.append("" if value is None else f"{value:.4f}" if base is None else
                         f"{value:.4f} ({100 * (value - base):+.1f} pts)")
        lines.append(f"| {images:,} | " + " | ".join(cells) + " |")
    with open(f"{out_prefix}.md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

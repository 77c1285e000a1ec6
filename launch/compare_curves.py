"""Put the learning curves of several runs side by side: one PNG and one Markdown table.

    python launch/compare_curves.py OUT_PREFIX LABEL=TRAIN_DIR:GLOBAL_BATCH ...

Each TRAIN_DIR holds the eval_curve.json of `python -m hvd_cifar.evaluate --all_checkpoints`.
Curves are drawn against images seen (steps x global batch), so runs of different global
batches compare at the same amount of data. Writes OUT_PREFIX.png and OUT_PREFIX.md.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(out_prefix, runs):
    curves = {}
    for run in runs:
        label, rest = run.split("=", 1)
        train_dir, global_batch = rest.rsplit(":", 1)
        with open(os.path.join(train_dir, "eval_curve.json")) as f:
            curves[label] = (int(global_batch), json.load(f))
    figure, axes = plt.subplots(figsize=(8, 5))
    for label, (global_batch, curve) in curves.items():
        axes.plot([c["global_step"] * global_batch / 1e6 for c in curve],
                  [c["precision_at_1"] for c in curve], "o-", label=label)
    axes.set_xlabel("images seen (millions)")
    axes.set_ylabel("precision @ 1 (moving averages, 10,000 test images)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(f"{out_prefix}.png", dpi=100)
    lines = ["| run | step | images seen | precision @ 1 | training wall time |",
             "|---|---|---|---|---|"]
    for label, (global_batch, curve) in curves.items():
        for c in curve:
            wall = c.get("wall_seconds")
            lines.append(f"| {label} | {c['global_step']:,} | {c['global_step'] * global_batch:,} "
                         f"| {c['precision_at_1']:.4f} | "
                         f"{'' if wall is None else f'{wall / 60:.1f} min'} |")
    with open(f"{out_prefix}.md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

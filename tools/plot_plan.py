"""The projected training time to 0.80 against the number of GPUs, one line a per-GPU batch,
from hvd_cifar.plan's rows (a projection: see docs/results/time_to_accuracy.md).

    python tools/plot_plan.py OUT.png [--inputs plan_inputs.json]

Each point is the range between the high and the low per-GPU rate; a global batch whose runs
stopped short of 0.80 is drawn hollow at its lower bound, one never measured is left out.
"""
import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hvd_cifar import plan  # noqa: E402

GPU_COUNTS = (1, 8, 16, 32, 64)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--inputs", default=plan.INPUTS)
    args = parser.parse_args()
    inputs = plan.load_inputs(args.inputs)
    figure, axes = plt.subplots(figsize=(7.5, 4.8))
    for batch in sorted(inputs["rates"]):
        for bound, marker in ((False, "o"), (True, "o")):
            xs, lows, highs = [], [], []
            for gpus in GPU_COUNTS:
                row = {r["batch_per_gpu"]: r for r in plan.plan_rows(gpus, inputs)}[batch]
                entry = row["0.80"]
                if entry["seconds"] and (entry["how"] == "lower bound") == bound:
                    xs.append(gpus)
                    lows.append(entry["seconds"][0])
                    highs.append(entry["seconds"][1])
            if not xs:
                continue
            middle = [(lo * hi) ** 0.5 for lo, hi in zip(lows, highs)]
            axes.errorbar(xs, middle, yerr=[[m - lo for m, lo in zip(middle, lows)],
                                            [hi - m for m, hi in zip(middle, highs)]],
                          marker=marker, capsize=3, linestyle="-" if not bound else ":",
                          markerfacecolor="white" if bound else None,
                          label=f"{batch} a GPU" + (" (lower bound)" if bound else ""))
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xticks(GPU_COUNTS, [str(g) for g in GPU_COUNTS])
    axes.set_xlabel("GPUs (8 a node; nodes over the inputs' network)")
    axes.set_ylabel("projected seconds of training to 0.80")
    axes.set_title("Projection, not a measurement: measured images x per-GPU rate range")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(args.out, dpi=100)


if __name__ == "__main__":
    main()

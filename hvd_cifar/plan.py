"""How long a run to a target accuracy would take on N GPUs, and which batch gets there first: a
projection, from measured images-to-accuracy and per-GPU rates (plan_inputs.json).

    python -m hvd_cifar.plan --gpus 32
    python -m hvd_cifar.plan --gpus 8 --rate 128=180000 --network_gbit_per_sec 100
    python -m hvd_cifar.plan --gpus 64 --inputs my_inputs.json

For each per-GPU batch: the global batch (GPUs x batch), the images it needs to reach the
target (measured at that global batch, interpolated between measured ones, or unknown), one
step's compute and ring all-reduce time (no overlap: the pessimistic case), and the seconds of
training, as a range between the high and the low per-GPU rate; then the recommendation and the
command that trains it with the setting measured at its global batch. Nothing here runs on a GPU.
"""
if __name__ == "__main__":  # a command: TensorFlow's C++ lines begin at its import
    from hvd_cifar.native_logs import quiet_native_logs
    quiet_native_logs()

import dataclasses
import json
import math
import os

from hvd_cifar import model as model_lib, policy
from hvd_cifar.command import (UserError, flag, parse_command, positive_float, positive_int,
                               run_command, say)

INPUTS = os.path.join(os.path.dirname(__file__), "plan_inputs.json")
TARGETS = ("0.80", "0.83")
BYTES_PER_GRADIENT_VALUE = 4  # float32 gradients


def load_inputs(path=INPUTS):
    """The planner's inputs, checked: a UserError naming the file and what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            inputs = json.load(f)
    except (OSError, ValueError) as error:
        raise UserError(f"--inputs {path}: cannot be read as JSON "
                        f"({getattr(error, 'strerror', None) or error})") from None
    try:
        measured = {int(batch): row for batch, row in inputs["images_to_accuracy"].items()}
        rates = {int(batch): (float(row["low"]), float(row["high"]))
                 for batch, row in inputs["images_per_sec_per_gpu"].items()}
        for batch, row in measured.items():
            for target in TARGETS:
                if row.get(target) is not None and not row[target] > 0:
                    raise ValueError(f"images to {target} at batch {batch} must be positive")
        for batch, (low, high) in rates.items():
            if not 0 < low <= high:
                raise ValueError(f"the rate at batch {batch} must be 0 < low <= high")
        links = {key: float(inputs[key]) for key in (
            "gpus_per_node", "nvlink_gbit_per_sec", "network_gbit_per_sec",
            "nvlink_hop_seconds", "network_hop_seconds")}
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UserError(f"--inputs {path}: {error}") from None
    return {"measured": measured, "rates": rates, **links}


def images_to(target, global_batch, measured):
    """(images, how they were found) to reach target at global_batch: ('measured', 'lower
    bound' when the runs stopped short of it, 'interpolated', 'as batch B', or 'unmeasured'
    with images None). Between two measured batches the images are interpolated linearly in
    log(images) against log(batch)."""
    def known(batch):
        row = measured[batch]
        if row.get(target) is not None:
            return float(row[target]), "measured"
        if row.get("reached_by"):
            return float(row["reached_by"]), "lower bound"
        return None, "unmeasured"

    batches = sorted(measured)
    if global_batch in measured:
        return known(global_batch)
    if global_batch < batches[0]:
        # Below the smallest batch measured, as many images (a smaller batch takes more,
        # smaller steps, and needs no more images in the tutorial's recipe).
        images, how = known(batches[0])
        return images, (f"as batch {batches[0]}" if how == "measured" else how)
    if global_batch > batches[-1]:
        return None, "unmeasured"
    below = max(b for b in batches if b < global_batch)
    above = min(b for b in batches if b > global_batch)
    (low_images, low_how), (high_images, high_how) = known(below), known(above)
    if low_how != "measured" or high_how != "measured":
        # Only a bound is known: at least the larger batch's bound or measurement.
        bound = max(x for x in (low_images, high_images, 0.0) if x is not None)
        return (bound or None), ("lower bound" if bound else "unmeasured")
    share = math.log(global_batch / below) / math.log(above / below)
    return (math.exp(math.log(low_images) + share * math.log(high_images / low_images)),
            "interpolated")


def allreduce_seconds(gpus, inputs, parameters=model_lib.NUM_PARAMETERS):
    """One ring all-reduce of the gradients across gpus: 2(N-1)/N of the bytes through each
    link, over NVLink within one node and over the network once the ring leaves it."""
    if gpus == 1:
        return 0.0
    within_node = gpus <= inputs["gpus_per_node"]
    gbit = inputs["nvlink_gbit_per_sec"] if within_node else inputs["network_gbit_per_sec"]
    hop = inputs["nvlink_hop_seconds"] if within_node else inputs["network_hop_seconds"]
    volume = parameters * BYTES_PER_GRADIENT_VALUE * 2 * (gpus - 1) / gpus
    return volume * 8 / (gbit * 1e9) + 2 * (gpus - 1) * hop


def plan_rows(gpus, inputs):
    """One row a per-GPU batch: global batch, images to each target and how known, step
    seconds (with the high and the low rate) and seconds to each target (fast, slow)."""
    rows = []
    for batch in sorted(inputs["rates"]):
        low, high = inputs["rates"][batch]
        communicate = allreduce_seconds(gpus, inputs)
        step_fast, step_slow = batch / high + communicate, batch / low + communicate
        row = {"batch_per_gpu": batch, "global_batch": batch * gpus,
               "step_ms": (1000 * step_fast, 1000 * step_slow),
               "allreduce_ms": 1000 * communicate}
        for target in TARGETS:
            images, how = images_to(target, batch * gpus, inputs["measured"])
            steps = None if images is None else math.ceil(images / (batch * gpus))
            row[target] = {"images": images, "how": how, "seconds": None if steps is None else (
                steps * step_fast, steps * step_slow)}
        rows.append(row)
    return rows


def fastest(rows, target):
    """The row that reaches target soonest (by the geometric mean of its range), among rows
    whose images are known (measured or interpolated, not a bound); None when there is none."""
    known = [r for r in rows if r[target]["seconds"] and r[target]["how"] != "lower bound"]
    return min(known, key=lambda r: middle(r[target]), default=None)


def recommendation(gpus, inputs, target="0.80"):
    """The fastest known way to target with at most gpus GPUs: (GPUs to use, its row), or
    None when no global batch within reach has been measured to reach it. Fewer GPUs can be
    faster: they need a smaller global batch, and their all-reduce may stay within a node."""
    counts = sorted({gpus} | {n for n in (1, 2, 4, 8, 16, 32, 64, 128) if n < gpus})
    best = None
    for n in counts:
        row = fastest(plan_rows(n, inputs), target)
        if row and (best is None or middle(row[target]) < middle(best[1][target])):
            best = (n, row)
    return best


def middle(entry):
    return math.sqrt(entry["seconds"][0] * entry["seconds"][1])


def seconds_text(entry):
    if entry["seconds"] is None:
        return "-"
    fast, slow = entry["seconds"]
    more = ">" if entry["how"] == "lower bound" else ""
    return f"{more}{fast:.1f}-{slow:.1f}"


def images_text(entry):
    if entry["images"] is None:
        return "unmeasured"
    more = ">" if entry["how"] == "lower bound" else ""
    return f"{more}{entry['images'] / 1e6:.2f}M ({entry['how']})"


def plan_table(gpus, inputs):
    rows = plan_rows(gpus, inputs)
    where = ("one GPU" if gpus == 1 else
             f"{gpus} GPUs, NVLink" if gpus <= inputs["gpus_per_node"] else
             f"{gpus} GPUs, {math.ceil(gpus / inputs['gpus_per_node']):g} nodes over "
             f"{inputs['network_gbit_per_sec']:g} Gbit/s")
    lines = [f"Projection for {where} (ring all-reduce without overlap, "
             f"{rows[0]['allreduce_ms']:.3f} ms a step); seconds of training from the high to the "
             "low per-GPU rate (start-up, input and evaluation not counted); '>' where the runs "
             "stopped short of the target.", "",
             "| batch/GPU | global batch | step ms | images to 0.80 | seconds to 0.80 | "
             "images to 0.83 | seconds to 0.83 |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['batch_per_gpu']} | {row['global_batch']} | "
                     f"{row['step_ms'][0]:.2f}-{row['step_ms'][1]:.2f} | "
                     f"{images_text(row['0.80'])} | {seconds_text(row['0.80'])} | "
                     f"{images_text(row['0.83'])} | {seconds_text(row['0.83'])} |")
    lines.append("")
    for target in TARGETS:
        best = fastest(rows, target)
        lines.append(f"Fastest to {target} on {gpus} GPU{'s' if gpus > 1 else ''}: " + (
            f"batch {best['batch_per_gpu']} a GPU (global {best['global_batch']}), "
            f"{seconds_text(best[target])} s" if best else
            "unknown: no global batch it allows has reached it in the runs measured"))
    best = recommendation(gpus, inputs)
    if best:
        used, row = best
        lines.append(f"Recommendation with {gpus} GPU{'s' if gpus > 1 else ''}: " + (
            f"use {used} of them" if used < gpus else "use them all" if gpus > 1 else "use it")
            + f", batch {row['batch_per_gpu']} a GPU (global {row['global_batch']}): "
            f"{seconds_text(row['0.80'])} s to 0.80"
            + (" (more GPUs need a global batch not yet shown to reach 0.80, or an "
               "all-reduce across nodes that costs more than it saves)" if used < gpus else ""))
        lines.append("Train it with: " + train_command(used, row["batch_per_gpu"], inputs))
    return "\n".join(lines)


def train_command(gpus, batch_per_gpu, inputs):
    """The command that trains with gpus GPUs of batch_per_gpu and the setting measured at their
    global batch (at another batch than 128 a GPU the defaults, which follow the number of
    workers, would give another)."""
    hosts = "" if gpus <= inputs["gpus_per_node"] else " -hostfile hosts"
    flags = policy.flags_text(policy.settings_for_global_batch(batch_per_gpu, gpus))
    if batch_per_gpu == policy.TUTORIAL_BATCH:
        flags = "(at 128 a GPU its defaults are the policy's setting)"
    return f"horovodrun -np {gpus}{hosts} python -m hvd_cifar.train {flags}"


def expected_images_line(global_batch, inputs=None):
    """What the measurements say of a run at global_batch reaching 0.80 (train's start-up)."""
    inputs = inputs or load_inputs()
    images, how = images_to("0.80", global_batch, inputs["measured"])
    source = "docs/results/time_to_accuracy.md"
    if images is None:
        return (f"images to 0.80 at global batch {global_batch}: not measured ({source}; "
                "python -m hvd_cifar.plan projects times)")
    if how == "lower bound":
        return (f"images to 0.80 at global batch {global_batch}: more than {images / 1e6:.2f}M "
                f"(the runs measured stopped short of it on CPU; {source})")
    return (f"images to 0.80 at global batch {global_batch}: {images / 1e6:.2f}M, {how} on "
            f"CPU runs ({source}); times on GPUs are projected: python -m hvd_cifar.plan")


@dataclasses.dataclass
class PlanConfig:
    gpus: list = flag(None, "GPU counts to plan for (default: 1 8 16 32 64)", positive_int,
                      nargs="+")
    inputs: str = flag(INPUTS, "the measurements and rates the projection starts from (JSON; "
                       "edit a copy)")
    rate: list = flag(None, "BATCH=IMAGES_PER_SEC: one GPU's measured training rate at that "
                      "batch (e.g. from hvd_cifar.check), replacing the range", str, nargs="+")
    network_gbit_per_sec: float = flag(None, "the network between nodes (default: the inputs' "
                                       "200)", positive_float)


def apply_rates(inputs, rates):
    """--rate BATCH=IMAGES_PER_SEC: a measured rate replaces the range at that batch."""
    for text in rates or ():
        batch, _, value = text.partition("=")
        try:
            batch, value = int(batch), float(value)
        except ValueError:
            raise UserError(f"--rate {text}: must be BATCH=IMAGES_PER_SEC") from None
        if batch not in inputs["rates"]:
            raise UserError(f"--rate {text}: batch {batch} is not one of the planned batches "
                            f"({', '.join(map(str, sorted(inputs['rates'])))})")
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"--rate {text}: the rate must be a positive number")
        inputs["rates"][batch] = (value, value)


def plan(config):
    inputs = load_inputs(config.inputs)
    apply_rates(inputs, config.rate)
    if config.network_gbit_per_sec:
        inputs["network_gbit_per_sec"] = config.network_gbit_per_sec
    for gpus in config.gpus or (1, 8, 16, 32, 64):
        say(plan_table(gpus, inputs) + "\n")


def main(argv=None):
    config = parse_command(PlanConfig, "python -m hvd_cifar.plan",
                           "Project the training time to 0.80 and 0.83 precision @ 1 on N "
                           "GPUs for each per-GPU batch, and name the fastest (a projection "
                           "from measured images-to-accuracy and per-GPU rates).", argv)
    run_command(lambda: plan(config))


if __name__ == "__main__":
    main()

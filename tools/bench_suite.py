"""`make bench`: hvd_cifar against what a user would run instead, in one go on one machine.

    python tools/bench_suite.py [--out bench] [--steps 100] [--repeats 3] [--batch_size 128]

Runs python -m hvd_cifar.bench for (a) plain Keras model.fit, (b) hvd_cifar alone, (c) hvd_cifar
under horovodrun -np 2 with Gloo and with MPI, and (d) tf.distribute's
MultiWorkerMirroredStrategy with 2 workers on localhost, all of them --repeats times in turn (a
drift in the machine's speed then reaches every configuration alike), and keeps each one's
median run; then writes OUT/results.json (every kept run with the rates of all repeats, the
ratios and the targets), OUT/results.md (the table) and OUT/throughput.png (images/s against
ranks, with the ideal line).
"""
import argparse
import json
import os
import socket
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
RUN_TIMEOUT_SECONDS = 900
JSON_START = '{"framework"'
# The targets on a 2-core CPU machine: (ratio name, minimum, what it compares).
TARGETS = (
    ("np1_over_keras", 0.97, "hvd_cifar np=1 / plain Keras model.fit"),
    ("np2_mpi_over_np1", 0.95, "hvd_cifar np=2 MPI, the default (total) / np=1"),
    ("input_over_training", 4.0, "input pipeline alone / training, np=1"),
    ("ceiling_fraction", 0.70, "training GFLOP/s / float32 matmul GFLOP/s, np=1"),
    ("np2_mpi_over_multiworker", 1.0, "hvd_cifar np=2 MPI / MultiWorkerMirroredStrategy"),
)


def bench_command(*flags):
    return [sys.executable, "-m", "hvd_cifar.bench", "--json", *flags]


def result_of(output):
    """The JSON object rank 0 printed, after whatever prefix the launcher tags lines with."""
    for line in output.splitlines():
        if JSON_START in line:
            # raw_decode: Open MPI may glue its next tag onto the end of the line.
            return json.JSONDecoder().raw_decode(line[line.index(JSON_START):])[0]
    raise RuntimeError("no benchmark result in the output:\n" + output[-3000:])


def run(name, commands, env=None):
    """Start every command at once (the workers of one job); the result rank 0 printed."""
    print(f"bench: {name}", flush=True)
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, cwd=REPO_ROOT, env={**os.environ, **extra})
                 for command, extra in zip(commands, env or [{}] * len(commands))]
    outputs = [process.communicate(timeout=RUN_TIMEOUT_SECONDS)[0] for process in processes]
    for process, output in zip(processes, outputs):
        if process.returncode:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{output[-3000:]}")
    result = result_of(outputs[0])
    result["name"] = name
    print(f"bench: {name}: {result['images_per_sec']:.1f} images/s", flush=True)
    return result


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def multiworker_env(workers):
    addresses = [f"localhost:{port}" for port in free_ports(workers)]
    return [{"TF_CONFIG": json.dumps({"cluster": {"worker": addresses},
                                      "task": {"type": "worker", "index": index}})}
            for index in range(workers)]


def configurations(steps, batch_size):
    """(key, name, commands, environments) of every run of the suite."""
    flags = ["--steps", str(steps), "--batch_size", str(batch_size)]
    horovodrun = os.path.join(BIN, "horovodrun")
    return [
        ("keras", "keras model.fit", [bench_command("--framework", "keras", *flags)], None),
        ("np1", "hvd_cifar np=1", [bench_command(*flags)], None),
        ("np2_gloo", "hvd_cifar np=2 Gloo",
         [[horovodrun, "-np", "2", "--gloo", *bench_command(*flags)]], None),
        ("np2_mpi", "hvd_cifar np=2 MPI",
         [[horovodrun, "-np", "2", "--mpi", *bench_command(*flags)]], None),
        ("multiworker", "MultiWorkerMirroredStrategy 2 workers",
         [bench_command("--framework", "multiworker", *flags)] * 2, multiworker_env),
    ]


def median_run(results):
    """The repeat with the median rate (the lower middle of an even count, so a real run),
    carrying the rates of all repeats."""
    by_rate = sorted(results, key=lambda result: result["images_per_sec"])
    kept = dict(by_rate[(len(by_rate) - 1) // 2])
    kept["images_per_sec_repeats"] = [result["images_per_sec"] for result in results]
    return kept


def run_all(steps, batch_size, repeats):
    results = {}
    for repeat in range(repeats):
        print(f"bench: repeat {repeat + 1} of {repeats}", flush=True)
        for key, name, commands, environments in configurations(steps, batch_size):
            env = environments(len(commands)) if environments else None
            results.setdefault(key, []).append(run(name, commands, env))
    return {key: median_run(runs) for key, runs in results.items()}


def ratios_of(runs):
    rate = {key: run["images_per_sec"] for key, run in runs.items()}
    return {"np1_over_keras": rate["np1"] / rate["keras"],
            "np2_gloo_over_np1": rate["np2_gloo"] / rate["np1"],
            "np2_mpi_over_np1": rate["np2_mpi"] / rate["np1"],
            "input_over_training": runs["np1"]["input_images_per_sec"] / rate["np1"],
            "ceiling_fraction": runs["np1"]["ceiling_fraction"],
            "np2_mpi_over_multiworker": rate["np2_mpi"] / rate["multiworker"],
            "np2_gloo_over_multiworker": rate["np2_gloo"] / rate["multiworker"]}


def markdown(runs, ratios, targets, command):
    baseline = runs["np1"]["images_per_sec"]
    repeats = len(runs["np1"]["images_per_sec_repeats"])
    lines = [f"Measured by `{command}` on {os.cpu_count()} CPU cores, synthetic batches of "
             f"{runs['np1']['batch_size']} per rank; each configuration ran {repeats} times in "
             f"turn and its median run is shown.", "",
             "| run | ranks | images/s | per rank | vs np=1 | step ms (median / p90) | "
             "real input images/s | input alone images/s | all-reduce share | GFLOP/s | "
             "images/s of each repeat |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs.values():
        lines.append(
            f"| {run['name']} | {run['ranks']} | {run['images_per_sec']:,.0f} | "
            f"{run['images_per_sec_per_rank']:,.0f} | {run['images_per_sec'] / baseline:.2f} | "
            f"{run['step_time_ms_median']:.1f} / {run['step_time_ms_p90']:.1f} | "
            f"{run.get('real_input_images_per_sec', '')} | {run.get('input_images_per_sec', '')} "
            f"| {run.get('allreduce_fraction', '')} | {run.get('gflops', '')} | "
            f"{', '.join(f'{rate:,.0f}' for rate in run['images_per_sec_repeats'])} |")
    lines += ["", f"Matmul ceiling (float32, {runs['np1']['ceiling_gflops']} GFLOP/s); "
              f"{runs['np1']['flops_per_image'] / 1e6:.1f} MFLOP per image for training.", "",
              "| target | measured | wanted | met |", "|---|---|---|---|"]
    for target in targets:
        lines.append(f"| {target['what']} | {target['measured']:.3f} | ≥ {target['minimum']} | "
                     f"{'yes' if target['met'] else 'no'} |")
    lines.append(f"| hvd_cifar np=2 Gloo / np=1 (the other controller) | "
                 f"{ratios['np2_gloo_over_np1']:.3f} | | |")
    return "\n".join(lines) + "\n"


def plot(runs, path):
    figure, axes = plt.subplots(figsize=(6, 4))
    single = runs["np1"]["images_per_sec"]
    axes.plot([1, 2], [single, 2 * single], "k--", label="ideal (np=1 x ranks)")
    axes.plot([1, 2], [single, runs["np2_gloo"]["images_per_sec"]], "o-", label="hvd_cifar Gloo")
    axes.plot([1, 2], [single, runs["np2_mpi"]["images_per_sec"]], "s-", label="hvd_cifar MPI")
    axes.plot([1], [runs["keras"]["images_per_sec"]], "^", label="Keras model.fit")
    axes.plot([2], [runs["multiworker"]["images_per_sec"]], "v",
              label="MultiWorkerMirroredStrategy")
    axes.set_xticks([1, 2])
    axes.set_xlabel("ranks (processes on one 2-core host)")
    axes.set_ylabel("images/s (all ranks)")
    axes.set_ylim(bottom=0)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench", help="folder for results.json/.md/.png")
    parser.add_argument("--steps", type=int, default=100, help="timed steps of every run")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of every configuration, in turn; the median is kept")
    parser.add_argument("--batch_size", type=int, default=128, help="batch per rank")
    args = parser.parse_args()
    if args.repeats < 1 or args.steps < 1:
        parser.error("--steps and --repeats must be at least 1")
    runs = run_all(args.steps, args.batch_size, args.repeats)
    ratios = {name: round(value, 4) for name, value in ratios_of(runs).items()}
    targets = [{"ratio": name, "what": what, "minimum": minimum, "measured": ratios[name],
                "met": ratios[name] >= minimum} for name, minimum, what in TARGETS]
    command = ("make bench" + (f" BENCH_STEPS={args.steps}" if args.steps != 100 else "") +
               (f" BENCH_REPEATS={args.repeats}" if args.repeats != 3 else ""))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"command": command, "runs": runs, "ratios": ratios, "targets": targets}, f,
                  indent=1)
    table = markdown(runs, ratios, targets, command)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    plot(runs, os.path.join(args.out, "throughput.png"))
    print(table)


if __name__ == "__main__":
    main()

"""Draw a stretch of a Horovod timeline (--horovod_timeline FILE) as a PNG: one row per tensor,
its negotiation (waiting until every rank asked for it) and its all-reduce as bars.

    .venv/bin/python tools/plot_timeline.py TIMELINE.json OUT.png [START_MS] [SPAN_MS]

The same file opens in chrome://tracing or ui.perfetto.dev; this is for pages like the README.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"NEGOTIATE": "#f0a030", "ALLREDUCE": "#3070c0"}


def read_events(path):
    text = open(path).read().strip().rstrip(",")
    # Horovod closes the JSON array only at shutdown; a timeline of a killed run lacks it.
    return json.loads(text if text.endswith("]") else text + "]")


def spans(events):
    """{tensor name: [(phase, start_us, end_us)]} from the B/E pairs of each tensor row."""
    names, open_spans, result = {}, {}, {}
    for event in events:
        if event.get("ph") == "M" and event.get("name") == "process_name" and \
                "name" in event.get("args", {}):
            names[event["pid"]] = event["args"]["name"]
        elif event.get("ph") == "B":
            open_spans.setdefault(event["pid"], []).append((event["name"], event["ts"]))
        elif event.get("ph") == "E" and open_spans.get(event["pid"]):
            name, start = open_spans[event["pid"]].pop()
            phase = "NEGOTIATE" if name.startswith("NEGOTIATE") else (
                "ALLREDUCE" if name == "ALLREDUCE" else None)
            if phase:
                result.setdefault(names.get(event["pid"], str(event["pid"])), []).append(
                    (phase, start, event["ts"]))
    return result


def gradient_index(name):
    """The variable index in a name like .../HorovodAllreduce_grads_3_0 (0 for grads_0)."""
    parts = name.rsplit("grads_", 1)[-1].split("_")
    return int(parts[0]) if parts[0].isdigit() else 0


def main(path, out, start_ms=None, span_ms=None):
    rows = {name: items for name, items in spans(read_events(path)).items()
            if "grads" in name} or spans(read_events(path))
    first = min(start for items in rows.values() for _, start, _ in items)
    last = max(end for items in rows.values() for _, _, end in items)
    begin = first + float(start_ms) * 1000 if start_ms else first + (last - first) * 0.5
    end = begin + (float(span_ms) * 1000 if span_ms else 300_000)
    names = sorted(rows, key=gradient_index)
    figure, axes = plt.subplots(figsize=(10, 0.35 * len(names) + 1.5))
    for row, name in enumerate(names):
        for phase, start, stop in rows[name]:
            if stop >= begin and start <= end:
                axes.barh(row, (stop - start) / 1000, left=(start - begin) / 1000,
                          color=COLORS[phase], height=0.6)
    axes.set_yticks(range(len(names)), [f"gradient {gradient_index(n)}" for n in names],
                    fontsize=7)
    axes.set_xlim(0, (end - begin) / 1000)
    axes.set_xlabel("ms")
    axes.legend(handles=[matplotlib.patches.Patch(color=c, label=p.lower())
                         for p, c in COLORS.items()], loc="upper right", fontsize=8)
    axes.set_title("Horovod timeline, rank 0: negotiation (waiting for every rank) and "
                   "all-reduce per gradient", fontsize=9)
    figure.tight_layout()
    figure.savefig(out, dpi=100)


if __name__ == "__main__":
    main(*sys.argv[1:])

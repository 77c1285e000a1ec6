"""How every command reads its flags and ends, and the flag groups several commands share.

Flags are dataclass fields (`flag(...)`) turned into argparse options by `parse_command`.
Every command ends through `run_command`: an expected failure (bad flag, missing or corrupt file,
wrong checkpoint) is one line `hvd_cifar: error: ...` on stderr and a non-zero exit, never a
traceback, and a stop on a signal exits with 128 + the signal number.
"""
import argparse
import dataclasses
import math
import re
import signal
import sys

# Where every command looks for the data and the run by default (the Makefile's DATA_DIR and
# TRAIN_DIR are the same).
DEFAULT_DATA_DIR = "data"
DEFAULT_TRAIN_DIR = "runs/train"


class UserError(Exception):
    """An expected failure the user can fix; its message names the file or flag. Under a
    launcher every rank meets it together, and rank 0 says it."""


class RankFailure(UserError):
    """A failure one rank meets on its own (it lost the others): every rank that meets it says
    it, naming itself."""


def first_line(error, default="failed"):
    """The first line of an error's message, for a one-line error, without the name of the
    TensorFlow function that TensorFlow puts in front of it ({{function_node ...}})."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(error)).strip()
    return text.splitlines()[0] if text else default


def count(number, noun, plural=None):
    """'1 rank', '2 ranks', '1 pass', '2 passes': a count as English says it."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def say(text, stream=None):
    """Print one line in one write: launchers that tag every piece of a rank's output
    (mpirun's `[1,0]<stdout>:`) would otherwise split a line printed in two writes."""
    stream = stream or sys.stdout
    stream.write(f"{text}\n")
    stream.flush()


def fail(message, status=1):
    say(f"hvd_cifar: error: {message}", sys.stderr)
    sys.exit(status)


class Stopped(Exception):
    """The command stopped on a signal after saving its work; it exits with 128 + signal."""

    def __init__(self, signal_number):
        super().__init__(signal_number)
        self.signal_number = signal_number


# Whether this process says the errors of its job: every process, until a command that
# starts a job of several processes says which one does (rank_setup.start_horovod).
_says_errors = [lambda: True]


def say_errors_when(predicate):
    """From now on this process says a shared error only when predicate() is true."""
    _says_errors[0] = predicate


def says_errors():
    """False on the ranks other than 0 of a Horovod job: the ranks agree on a failure before
    they part (see collectives.fail_together), so rank 0 says it once for all."""
    return _says_errors[0]()


def run_command(main):
    """Run a command's main() and end it: a UserError becomes the one-line error and exit
    status 1, a stop on a signal (or Ctrl-C) exits with 128 + the signal number."""
    try:
        return main()
    except Stopped as stopped:
        sys.exit(128 + stopped.signal_number)
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
    except UserError as error:
        if not (says_errors() or isinstance(error, RankFailure)):
            sys.exit(1)
        fail(error)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one `hvd_cifar: error:` line instead of usage + message."""

    def error(self, message):
        fail(message, status=2)


def number_flag(convert, description, accept):
    """An argparse type: text -> convert(text), refused unless accept(value)."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"must be {description}, got {text!r}")
        return value
    return parse


positive_int = number_flag(int, "a positive integer", lambda value: value > 0)
non_negative_int = number_flag(int, "an integer >= 0", lambda value: value >= 0)
positive_float = number_flag(float, "a positive number",
                             lambda value: math.isfinite(value) and value > 0)
non_negative_float = number_flag(float, "a number >= 0",
                                 lambda value: math.isfinite(value) and value >= 0)
# Seeds reach NumPy (below 2^32) and, with the rank added, TensorFlow's int32 seeds.
SEED_LIMIT = 2**31
seed_int = number_flag(int, f"an integer from 0 to {SEED_LIMIT - 1}",
                       lambda value: 0 <= value < SEED_LIMIT)
# A rank's batch is held whole in memory several times over (images, activations): a larger
# one cannot be meant, and int32 shapes overflow long before memory is enough.
MAX_BATCH_SIZE = 1 << 16
batch_size_int = number_flag(int, f"an integer from 1 to {MAX_BATCH_SIZE}",
                             lambda value: 0 < value <= MAX_BATCH_SIZE)
fraction = number_flag(float, "a number between 0 and 1", lambda value: 0 < value < 1)


def flag(default, help, type=None, **argparse_options):
    """A dataclass field that is also a command-line flag (help and argparse type beside it)."""
    return dataclasses.field(default=default,
                             metadata={"help": help, "type": type, **argparse_options})


def setting(help):
    """A dataclass field that is not a flag: a value the command works out (e.g. the optimizer
    settings chosen for the job's workers), None until then."""
    return dataclasses.field(default=None, metadata={"help": help, "not_a_flag": True})


def flag_values(config):
    """{flag name: value} of a config: its fields that are flags, as a run records them."""
    return {field.name: getattr(config, field.name) for field in dataclasses.fields(config)
            if not field.metadata.get("not_a_flag")}


def argument(help, **argparse_options):
    """A dataclass field that is a positional command-line argument (e.g. nargs="+")."""
    return dataclasses.field(default=None, metadata={"help": help, "positional": True,
                                                     **argparse_options})


def add_dataclass_flags(parser, config_class):
    """Add one `--name` flag per field of config_class (the tutorial's underscore names), with
    its help and default; `--dashed-name` is accepted as well."""
    for field in dataclasses.fields(config_class):
        if field.metadata.get("not_a_flag"):
            continue
        options = dict(field.metadata)
        help_text = options.pop("help")
        if options.pop("positional", False):
            parser.add_argument(field.name, help=help_text, **options)
            continue
        if field.default is False:
            options = dict(action="store_true")
            help_text += " (default: off)"
        else:
            # The field's declared type, so a flag whose default is None still takes a value.
            options["type"] = options.pop("type") or field.type
            if field.default is not None:
                help_text += f" (default: {field.default})"
        parser.add_argument(f"--{field.name}", dest=field.name, default=field.default,
                            help=help_text, **options)
        if "_" in field.name:
            # The dashed spelling works too, hidden from --help; errors name the one typed.
            parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name,
                                default=argparse.SUPPRESS, help=argparse.SUPPRESS, **options)


def parse_command(config_class, prog, description, argv=None):
    """A config_class instance from the command line (argv, default sys.argv[1:])."""
    parser = ArgumentParser(prog=prog, description=description)
    add_dataclass_flags(parser, config_class)
    return config_class(**vars(parser.parse_args(argv)))


def parse_subcommand(commands, prog, description, argv=None):
    """(name, config) for a command with subcommands: commands maps each name to
    (config_class, help)."""
    parser = ArgumentParser(prog=prog, description=description)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (config_class, help_text) in commands.items():
        add_dataclass_flags(subparsers.add_parser(name, help=help_text), config_class)
    arguments = vars(parser.parse_args(argv))
    name = arguments.pop("command")
    return name, commands[name][0](**arguments)


# ---------------------------------------------------------------------------------------------
# Flag groups several commands share (a command's config class inherits the groups it takes)

@dataclasses.dataclass
class DeviceFlags:
    """How a rank uses its device."""
    threads_per_rank: int = flag(0, "TensorFlow threads of each CPU rank (0: the host's cores "
                                 "split between its ranks)", non_negative_int)
    xla: str = flag("auto", "compile the forward pass and loss (and so their gradient) with "
                    "XLA; the all-reduce stays outside (auto: on GPUs only)",
                    choices=("auto", "on", "off"))


def cpu_threads_per_rank(requested, cores, ranks_on_host):
    """TensorFlow threads of one CPU rank: as asked, else the host's cores split between its
    ranks (oversubscribed thread pools make them all slower)."""
    return requested or max(1, cores // ranks_on_host)


@dataclasses.dataclass
class DeterminismFlags:
    deterministic: str = flag("auto", "TensorFlow's op determinism: a rerun, or a resumed run, "
                              "gives the same weights bit for bit, on GPUs too (cuDNN otherwise "
                              "picks non-deterministic kernels). auto: on unless XLA compiles "
                              "the step (--xla, on GPUs by default), which has no deterministic "
                              "MaxPool gradient in TensorFlow 2.15; on: refused with XLA; off "
                              "may be faster on a GPU", choices=("auto", "on", "off"))


@dataclasses.dataclass
class AllreduceFlags:
    fp16_allreduce: bool = flag(False, "compress gradients to float16 for the all-reduce "
                                "(halves the traffic between hosts)")


@dataclasses.dataclass
class TimelineFlags:
    horovod_timeline: str = flag(None, "write Horovod's timeline (negotiation and all-reduce "
                                 "of every tensor; rank 0) to this file, for chrome://tracing "
                                 "or ui.perfetto.dev", str)
    horovod_timeline_mark_cycles: bool = flag(False, "mark Horovod's background cycles in the "
                                              "timeline")

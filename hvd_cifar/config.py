"""Flags and the tutorial's training constants, and the one-line error contract of every command.

Every expected failure (bad flag, missing or corrupt file, wrong checkpoint) ends as one line
`hvd_cifar: error: ...` on stderr and a non-zero exit, never a traceback.
"""
import argparse
import dataclasses
import sys

# The tutorial's cifar10.py constants describing the training process.
INITIAL_LEARNING_RATE = 0.1        # Initial learning rate (per worker, before scaling).
NUM_EPOCHS_PER_DECAY = 350.0       # Epochs after which the learning rate decays.
LEARNING_RATE_DECAY_FACTOR = 0.1   # Learning rate decay factor.
MOVING_AVERAGE_DECAY = 0.9999      # The decay to use for the moving average.


class UserError(Exception):
    """An expected failure the user can fix; its message names the file or flag."""


def fail(message, status=1):
    print(f"hvd_cifar: error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def run_command(main):
    """Run a command's main(); a UserError becomes the one-line error and exit status 1."""
    try:
        return main()
    except UserError as error:
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
positive_float = number_flag(float, "a positive number", lambda value: value > 0)
non_negative_float = number_flag(float, "a number >= 0", lambda value: value >= 0)


def flag(default, help, type=None, **argparse_options):
    """A dataclass field that is also a command-line flag (help and argparse type beside it)."""
    return dataclasses.field(default=default,
                             metadata={"help": help, "type": type, **argparse_options})


def add_dataclass_flags(parser, config_class):
    """Add one `--name` flag per field of config_class (the tutorial's underscore names), with
    its help and default; `--dashed-name` is accepted as well."""
    for field in dataclasses.fields(config_class):
        options = dict(field.metadata)
        help_text = options.pop("help")
        if field.default is False:
            options = dict(action="store_true")
            help_text += " (default: off)"
        else:
            options["type"] = options.pop("type") or type(field.default)
            if field.default is not None:
                help_text += f" (default: {field.default})"
        parser.add_argument(f"--{field.name}", dest=field.name, default=field.default,
                            help=help_text, **options)
        if "_" in field.name:
            # The dashed spelling works too, hidden from --help; errors name the one typed.
            parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name,
                                default=argparse.SUPPRESS, help=argparse.SUPPRESS, **options)


def parse_into(config_class, parser, argv=None):
    add_dataclass_flags(parser, config_class)
    return config_class(**vars(parser.parse_args(argv)))

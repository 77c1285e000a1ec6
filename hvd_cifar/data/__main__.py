"""python -m hvd_cifar.data download|convert: prepare CIFAR-10 in the binary layout."""
if __name__ == "__main__":  # a command: TensorFlow's C++ lines begin at its import
    from hvd_cifar.native_logs import quiet_native_logs
    quiet_native_logs()

import dataclasses

from hvd_cifar.command import parse_subcommand, run_command
from hvd_cifar.data import convert, download


@dataclasses.dataclass
class DownloadConfig(download.DataSourceFlags):
    pass


def main(argv=None):
    name, config = parse_subcommand(
        {"download": (DownloadConfig, "download, verify and extract CIFAR-10"),
         "convert": (convert.ConvertConfig, "turn a class-folder tree of images into the "
                     "binary layout")},
        "python -m hvd_cifar.data", "Prepare CIFAR-10 data in the binary layout.", argv)
    run_command(lambda: download.download(config) if name == "download" else convert.run(config))


if __name__ == "__main__":
    main()

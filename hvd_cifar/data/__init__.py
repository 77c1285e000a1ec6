"""CIFAR-10 data: the binary record format (records), download (download), image decoding
(images), class-folder conversion (convert) and the input pipelines (pipeline); the command
line is `python -m hvd_cifar.data download|convert`. Nothing here knows about Horovod."""

"""Download, verify and extract the official CIFAR-10 archive into a data folder, and the flags
of a command that reads one. The batches folder only ever appears by an atomic rename of a fully
extracted copy, and the archive only by a rename after its checksum matched."""
import argparse
import dataclasses
import hashlib
import os
import re
import tarfile
import tempfile
import urllib.error
import urllib.request

from hvd_cifar.command import DEFAULT_DATA_DIR, UserError, flag
from hvd_cifar.data.records import BATCHES_DIR, split_files
from hvd_cifar.files import write_atomically

# The official archive (https://www.cs.toronto.edu/~kriz/cifar.html).
DATA_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
DATA_SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
ARCHIVE_NAME = "cifar-10-binary.tar.gz"
DOWNLOAD_CHUNK_BYTES = 1 << 20
DOWNLOAD_TIMEOUT_SECONDS = 60


def sha256_flag(text):
    """--data_sha256: 64 hex digits, in either case."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise argparse.ArgumentTypeError(f"must be a sha256 of 64 hex digits, got {text!r}")
    return text.lower()


@dataclasses.dataclass
class DataSourceFlags:
    """Where a command finds CIFAR-10, and where it downloads it from when it is missing."""
    data_dir: str = flag(DEFAULT_DATA_DIR, "folder holding cifar-10-batches-bin/ or "
                         f"{ARCHIVE_NAME}; the archive is downloaded there when missing")
    data_url: str = flag(DATA_URL, "where to download the archive from: a mirror or a "
                         "file:// path")
    data_sha256: str = flag(DATA_SHA256, "expected sha256 of the downloaded archive (64 hex "
                            "digits)", sha256_flag)
    no_download: bool = flag(False, "fail instead of downloading when the data is missing")


def ensure_batches_dir(data_dir, data_url=DATA_URL, sha256=DATA_SHA256, fetch=True,
                       no_fetch_reason="--no_download is set"):
    """Return data_dir/cifar-10-batches-bin, extracting or downloading the archive when needed.

    The batches folder only ever appears by an atomic rename of a fully extracted copy, and the
    archive only by a rename after its checksum matched: an interrupted run leaves nothing that
    looks complete.
    """
    batches_dir = os.path.join(data_dir, BATCHES_DIR)
    if os.path.isdir(batches_dir):
        return batches_dir
    archive = os.path.join(data_dir, ARCHIVE_NAME)
    if not os.path.isfile(archive):
        if not fetch:
            raise UserError(f"{batches_dir} not found and {no_fetch_reason}: put "
                            f"{ARCHIVE_NAME} or {BATCHES_DIR}/ in --data_dir {data_dir}")
        fetch_archive(data_url, archive, sha256)
    else:
        check_sha256(archive, sha256)
    extract(archive, data_dir)
    return batches_dir


def fetch_archive(url, archive, sha256):
    """Download url to archive, verifying size and sha256 before the file gets its final name."""
    data_dir = os.path.dirname(archive) or "."
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create --data_dir {data_dir}: {error.strerror}") from None

    def receive(partial):
        digest = hashlib.sha256()
        received = 0
        with open(partial, "wb") as f, urllib.request.urlopen(
                url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
            expected_bytes = response.headers.get("Content-Length")
            while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                f.write(chunk)
                digest.update(chunk)
                received += len(chunk)
        if expected_bytes is not None and received != int(expected_bytes):
            raise UserError(f"download of {url} stopped after {received} of {expected_bytes} "
                            "bytes; run again to retry")
        if digest.hexdigest() != sha256.lower():
            raise UserError(f"download of {url} has sha256 {digest.hexdigest()}, expected "
                            f"{sha256}; refusing to extract it")

    try:
        write_atomically(archive, receive)
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise UserError(f"cannot download {url} ({reason}); without internet, put "
                        f"{ARCHIVE_NAME} or {BATCHES_DIR}/ in --data_dir {data_dir}, or pass "
                        f"--data_url file:///path/to/{ARCHIVE_NAME}") from None


def file_sha256(path):
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(DOWNLOAD_CHUNK_BYTES):
                digest.update(chunk)
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error.strerror})") from None
    return digest.hexdigest()


def check_sha256(archive, sha256):
    if (actual := file_sha256(archive)) != sha256.lower():
        raise UserError(f"{archive} has sha256 {actual}, expected {sha256}: it is not the "
                        "CIFAR-10 binary archive (remove it, or pass --data_sha256 for a "
                        "different data set in the same layout)")


def extract(archive, data_dir):
    """Extract into a hidden temporary folder, then rename the batches folder into place."""
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".extract-") as scratch:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(scratch, filter="data")
        except (tarfile.TarError, OSError, EOFError) as error:
            raise UserError(f"{archive}: cannot extract ({error})") from None
        extracted = os.path.join(scratch, BATCHES_DIR)
        if not os.path.isdir(extracted):
            raise UserError(f"{archive} has no {BATCHES_DIR}/ folder")
        try:
            os.rename(extracted, os.path.join(data_dir, BATCHES_DIR))
        except OSError:
            # Another process (a rank on the same host) finished first; its copy is complete.
            if not os.path.isdir(os.path.join(data_dir, BATCHES_DIR)):
                raise


def download(config):
    """The download command: the batches folder of config (DataSourceFlags), counted."""
    batches_dir = ensure_batches_dir(config.data_dir, config.data_url, config.data_sha256,
                                     fetch=not config.no_download)
    _, num_train = split_files(batches_dir, "train")
    _, num_test = split_files(batches_dir, "test")
    print(f"{batches_dir}: {num_train} training and {num_test} test records")

"""Download, verify and extract, against a real archive served over loopback HTTP and file://."""
import contextlib
import http.server
import os
import tarfile
import threading

import pytest

from hvd_cifar.data import download, records
from hvd_cifar.command import UserError
from helpers import assert_one_line_error, python_module, write_cifar_dir


@pytest.fixture
def archive(tmp_path):
    """A CIFAR-layout tar.gz built here; (path, sha256, bytes)."""
    source = tmp_path / "source"
    write_cifar_dir(str(source), train_per_file=4, num_test=3)
    path = tmp_path / download.ARCHIVE_NAME
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source / records.BATCHES_DIR, arcname=records.BATCHES_DIR)
    return str(path), download.file_sha256(path), path.read_bytes()


@contextlib.contextmanager
def serve(body, cut_after=None):
    """Serve body at http://127.0.0.1:PORT/; with cut_after, announce it all but send only that
    many bytes and drop the connection (an interrupted download)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if cut_after is None else body[:cut_after])
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{download.ARCHIVE_NAME}"
    finally:
        server.shutdown()
        server.server_close()


def leftovers(data_dir):
    return sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else []


def test_a_good_archive_over_http_is_verified_and_extracted(tmp_path, archive):
    path, sha256, body = archive
    data_dir = str(tmp_path / "data")
    with serve(body) as url:
        batches_dir = download.ensure_batches_dir(data_dir, url, sha256)
    assert batches_dir == os.path.join(data_dir, records.BATCHES_DIR)
    assert records.split_files(batches_dir, "train")[1] == 20
    assert leftovers(data_dir) == sorted([download.ARCHIVE_NAME, records.BATCHES_DIR])


def test_a_file_url_serves_an_offline_copy(tmp_path, archive):
    path, sha256, _ = archive
    batches_dir = download.ensure_batches_dir(str(tmp_path / "data"), f"file://{path}", sha256)
    assert records.split_files(batches_dir, "test")[1] == 3


def test_a_wrong_checksum_is_refused_and_leaves_nothing(tmp_path, archive):
    _, _, body = archive
    data_dir = str(tmp_path / "data")
    with serve(body) as url, pytest.raises(UserError, match="refusing to extract"):
        download.ensure_batches_dir(data_dir, url, "0" * 64)
    assert leftovers(data_dir) == []


def test_an_interrupted_download_leaves_nothing_that_looks_complete(tmp_path, archive):
    _, sha256, body = archive
    data_dir = str(tmp_path / "data")
    with serve(body, cut_after=len(body) // 2) as url, pytest.raises(UserError):
        download.ensure_batches_dir(data_dir, url, sha256)
    assert leftovers(data_dir) == []


def test_an_archive_already_in_data_dir_is_verified_and_extracted_without_download(
        tmp_path, archive):
    path, sha256, body = archive
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / download.ARCHIVE_NAME).write_bytes(body)
    batches_dir = download.ensure_batches_dir(str(data_dir), "http://127.0.0.1:9/unreachable",
                                              sha256)
    assert records.split_files(batches_dir, "train")[1] == 20


def test_a_user_archive_with_the_wrong_checksum_is_kept_and_named(tmp_path, archive):
    _, _, body = archive
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / download.ARCHIVE_NAME).write_bytes(body)
    with pytest.raises(UserError, match=f"{download.ARCHIVE_NAME} has sha256 .* expected"):
        download.ensure_batches_dir(str(data_dir))  # the official checksum
    assert leftovers(str(data_dir)) == [download.ARCHIVE_NAME]  # the user's file is not deleted


def test_extracted_data_is_used_as_it_is(tmp_path):
    write_cifar_dir(str(tmp_path))
    batches_dir = download.ensure_batches_dir(str(tmp_path), "http://127.0.0.1:9/unreachable",
                                              fetch=True)
    assert records.split_files(batches_dir, "train")[1] == 200


def test_missing_data_with_downloads_off_says_what_to_provide(tmp_path):
    with pytest.raises(UserError, match="--no_download is set: put cifar-10-binary.tar.gz or "
                       "cifar-10-batches-bin/ in --data_dir"):
        download.ensure_batches_dir(str(tmp_path / "nothing"), fetch=False)


def test_the_download_command_explains_how_to_provide_data_when_offline(tmp_path):
    result = python_module("hvd_cifar.data", "download", "--data_dir", tmp_path / "d",
                           "--data_url", "http://127.0.0.1:9/cifar-10-binary.tar.gz")
    assert_one_line_error(result, "cannot download http://127.0.0.1:9/cifar-10-binary.tar.gz",
                          "--data_url file:///path/to/cifar-10-binary.tar.gz", status=1)
    assert leftovers(str(tmp_path / "d")) == []


def test_the_download_command_extracts_and_counts(tmp_path, archive):
    path, sha256, _ = archive
    result = python_module("hvd_cifar.data", "download", "--data_dir", tmp_path / "d",
                           "--data_url", f"file://{path}", "--data_sha256", sha256)
    assert result.returncode == 0, result.stderr
    assert "20 training and 3 test records" in result.stdout

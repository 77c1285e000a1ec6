"""Files and folders that appear whole or not at all.

Everything the commands write is built under a hidden temporary name beside its destination and
renamed into place: a rename within one file system is atomic, so a run that is interrupted or
fails half-way never leaves something that looks complete, and never damages what was there.
"""
import contextlib
import os
import shutil
import tempfile


def write_atomically(path, write, suffix=".part", replace=True):
    """write(temporary_path) builds the file, which then replaces path in one rename. When write
    fails, the temporary file is removed and path is left as it was. suffix ends the temporary
    name (some writers pick their format from it). With replace=False path must not exist: the
    finished file is hard-linked into place, which fails with FileExistsError when another
    writer got there first (of two at once, exactly one succeeds), leaving its file untouched."""
    directory, name = os.path.split(os.path.abspath(path))
    partial = os.path.join(directory, f".{name}.{os.getpid()}{suffix}")
    try:
        write(partial)
        if replace:
            os.replace(partial, path)
        else:
            os.link(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


@contextlib.contextmanager
def staged_folder(destination):
    """Yield an empty hidden folder beside destination; when the block ends without an error the
    folder becomes destination in one rename, otherwise it is removed."""
    parent = os.path.dirname(os.path.abspath(destination))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(destination)}.")
    try:
        yield staging
        # mkdtemp's 0700 would hide the result from other users: a folder as mkdir makes it.
        os.chmod(staging, 0o777 & ~current_umask())
        os.rename(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def current_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask

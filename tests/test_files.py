"""What is not a regular file (a FIFO with nothing writing to it, a device, a socket, a directory) is refused before
it is opened, as data and as a checkpoint: one line, exit code 2, and never a wait for a writer."""
import os
import socket

import pytest
from conftest import microgpt


def make(kind, tmp_path):
    """A path to something that is not a regular file, and what the error calls it."""
    path = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(path)
        return path, "is a FIFO (named pipe), not a file"
    if kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))  # (the socket file stays after the process ends)
        server.close()
        return path, "is a socket, not a file"
    if kind == "device":
        return "/dev/zero", "is a character device, not a file"  # reading it would never end
    path.mkdir()
    return path, "is a directory"


@pytest.mark.parametrize("kind", ["fifo", "socket", "device", "directory"])
def test_data_that_is_not_a_file(tmp_path, kind):
    path, message = make(kind, tmp_path)
    result = microgpt("train", "--data", path, cwd=tmp_path, timeout=60)  # (a FIFO opened would wait forever)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_a_checkpoint_that_is_not_a_file(tmp_path, kind):
    path, message = make(kind, tmp_path)
    result = microgpt("sample", "--from", path, cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr

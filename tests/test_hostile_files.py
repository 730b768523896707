"""Files that are not what they claim: a FIFO, socket, directory or symlink loop where vla-lab reads a file is one
line naming what it is (opening a FIFO would block until a writer comes); images of more than 8 bits per channel
are refused instead of clipped."""

from __future__ import annotations

import os
import re
import signal
import socket
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from testkit import assert_one_line_error, run_cli, snapshot

from vla_lab import files
from vla_lab.errors import CheckpointError, InputError
from vla_lab.model import load_pretrained
from vla_lab.processing.images import load_image
from vla_lab.run_dir import read_json_object


@contextmanager
def no_blocking(seconds: int = 20):
    """Fail instead of hanging when a read blocks (a FIFO opened for reading waits for a writer)."""
    def expire(*_):
        raise TimeoutError("a read blocked")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def make(kind: str, path: Path) -> Path:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink loop":
        os.symlink(path, path)
    elif kind == "dangling symlink":
        os.symlink(path.with_name("nowhere"), path)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()
    return path


WORDS = {"fifo": "is a FIFO (named pipe)", "directory": "is a directory", "symlink loop": "is a symlink loop",
         "dangling symlink": "is a symlink to nothing", "socket": "is a socket"}


@pytest.mark.parametrize("kind", list(WORDS))
def test_not_a_file_names_what_the_path_is(tmp_path, kind) -> None:
    path = make(kind, tmp_path / "thing")
    assert files.not_a_file(path) == WORDS[kind]
    with pytest.raises(InputError, match="^" + re.escape(f"image: got '{path}', which {WORDS[kind]}, expected an "
                                                         "image file") + "$"):
        files.check_regular_file(path, "image", "an image file")
    assert files.not_a_file(tmp_path) == "is a directory" and files.not_a_file(tmp_path / "none") == "does not exist"
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    assert files.not_a_file(regular) is None and files.check_regular_file(regular, "f", "x") == regular


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "action_head--1_checkpoint.pt",
                                  "vocab.json", "merges.txt", "tokenizer_config.json"])
def test_a_fifo_in_a_checkpoint_is_refused_without_blocking(checkpoint, image, tmp_path, name) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in checkpoint.iterdir():
        if path.name != name:
            (copy / path.name).write_bytes(path.read_bytes())
    assert (checkpoint / name).exists(), sorted(p.name for p in checkpoint.iterdir())
    os.mkfifo(copy / name)
    before = snapshot(copy)
    with no_blocking(), pytest.raises(CheckpointError, match=re.escape(f"got '{copy / name}', which is a FIFO (named "
                                                                       "pipe)")):
        load_pretrained(copy)
    with no_blocking():
        status, stdout, err = run_cli(["predict", "--model", copy, "--image", image, "--instruction", "a"])
    assert "which is a FIFO (named pipe)" in assert_one_line_error(status, err, "predict") and stdout == ""
    assert snapshot(copy) == before


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink loop", "socket"])
def test_an_image_that_is_not_a_file_is_one_line(tmp_path, kind) -> None:
    path = make(kind, tmp_path / "view.png")
    with no_blocking():
        status, stdout, err = run_cli(["predict", "--model", "tiny", "--image", path, "--instruction", "pick"])
    line = assert_one_line_error(status, err, "predict")
    assert f"which {WORDS[kind]}, expected an image file" in line and stdout == ""


def test_a_run_directory_file_that_is_a_fifo_is_one_line(tmp_path) -> None:
    path = make("fifo", tmp_path / "vla_lab_run.json")
    with no_blocking(), pytest.raises(InputError, match=r"^vla_lab_run\.json: got .*, which is a FIFO \(named pipe\), "
                                                        r"expected a JSON object$"):
        read_json_object(path)


@pytest.mark.parametrize(("values", "mode", "depth", "suffix"), [
    (np.full((8, 8), 40000, np.uint16), "I;16", "16-bit integer", "png"),
    (np.full((8, 8), np.nan, np.float32), "F", "32-bit float", "tiff"),
    (np.full((8, 8), 70000, np.int32), "I", "32-bit integer", "tiff"),
])
def test_images_of_more_than_eight_bits_are_refused_not_clipped(tmp_path, values, mode, depth, suffix) -> None:
    image = PIL.Image.fromarray(values)
    assert image.mode == mode
    with pytest.raises(InputError, match="^" + re.escape(f"image: got a PIL image, an image of mode '{mode}' ({depth} "
                                                         "values), expected 8 bits per channel")):
        load_image(image)
    path = tmp_path / f"frame.{suffix}"
    image.save(path)
    with pytest.raises(InputError, match="^" + re.escape(f"image: got path '{path}', an image of mode '")):
        load_image(path)


def test_eight_bit_images_still_load(tmp_path) -> None:
    gray = PIL.Image.fromarray(np.full((8, 8), 200, np.uint8))
    assert np.asarray(load_image(gray)).shape == (8, 8, 3)
    path = tmp_path / "rgba.png"
    PIL.Image.fromarray(np.full((8, 8, 4), 100, np.uint8)).save(path)
    assert np.asarray(load_image(path))[0, 0].tolist() == [100, 100, 100]

"""MNIST's IDX files (plain or gzipped): finding them, checking their headers, reading them with
numpy, with clear errors for corrupt files. No torch: the spec gate checks files with this in the
API process.

IDX layout: a 4-byte big-endian magic number (2051 for images, 2049 for labels), then big-endian
uint32 sizes (count, and rows, cols for images), then the uint8 data.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
IMAGE_SIDE = 28
IDX_FILE_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FULL_MNIST = (60_000, 10_000)  # images in the training and test files of MNIST itself


class MNISTFormatError(ValueError):
    """An MNIST IDX file that is truncated, compressed wrongly, or not of the expected kind."""


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as error:
        raise MNISTFormatError(f"{path}: not a valid gzip file ({error})") from error


def _header(data: bytes, path: Path, magic: int, n_sizes: int) -> list[int]:
    """The sizes after the magic number, checking the magic number and the header's length."""
    header_len = 4 * (1 + n_sizes)
    if len(data) < header_len:
        raise MNISTFormatError(f"{path}: only {len(data)} bytes, shorter than an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise MNISTFormatError(
            f"{path}: magic number {found}, expected {magic}; not an MNIST IDX file of this kind"
        )
    return [int.from_bytes(data[4 * i : 4 * i + 4], "big") for i in range(1, 1 + n_sizes)]


def _payload(data: bytes, path: Path, offset: int, expected_len: int) -> np.ndarray:
    if len(data) - offset != expected_len:
        raise MNISTFormatError(
            f"{path}: {len(data) - offset} data bytes, header announces {expected_len} (truncated or corrupt)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset)


def idx_sizes(path: Path, magic: int, n_sizes: int) -> list[int]:
    """The sizes an IDX file's header announces, checked against the file's length, without reading
    its data: for a .gz file the length is gzip's ISIZE trailer (the uncompressed size mod 2**32)."""
    header_len = 4 * (1 + n_sizes)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as file:
                head = file.read(header_len)
            with path.open("rb") as raw:
                raw.seek(-4, 2)
                length = int.from_bytes(raw.read(4), "little")
        else:
            with path.open("rb") as file:
                head = file.read(header_len)
            length = path.stat().st_size
    except (OSError, EOFError, zlib.error) as error:
        raise MNISTFormatError(f"{path}: cannot be read ({error})") from error
    sizes = _header(head, path, magic, n_sizes)
    expected = header_len + int(np.prod(sizes))
    if path.suffix == ".gz":
        expected %= 1 << 32
    if length != expected:
        raise MNISTFormatError(f"{path}: {length} bytes, header announces {expected} (truncated or corrupt)")
    return sizes


def read_idx_images(path: Path) -> np.ndarray:
    """Images of an IDX3 file as uint8 (N, 784), each row a 28x28 image read row by row."""
    data = _read_bytes(path)
    n, rows, cols = _header(data, path, IMAGES_MAGIC, n_sizes=3)
    if (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE):
        raise MNISTFormatError(f"{path}: images of {rows}x{cols}, expected {IMAGE_SIDE}x{IMAGE_SIDE}")
    pixels = _payload(data, path, offset=16, expected_len=n * rows * cols)
    return pixels.reshape(n, rows * cols)  # (N, 784)


def read_idx_labels(path: Path) -> np.ndarray:
    """Labels of an IDX1 file as uint8 (N,), checked to be digits 0..9."""
    data = _read_bytes(path)
    (n,) = _header(data, path, LABELS_MAGIC, n_sizes=1)
    labels = _payload(data, path, offset=8, expected_len=n)  # (N,)
    if n and labels.max() > 9:
        raise MNISTFormatError(f"{path}: label {labels.max()} is not a digit 0..9")
    return labels


def find_idx_files(root: Path) -> dict[str, Path] | None:
    """The four IDX files, all from `root` or all from `root/MNIST/raw`; a plain file beats its .gz."""
    for directory in (root, root / "MNIST" / "raw"):
        found = {}
        for key, name in IDX_FILE_NAMES.items():
            candidates = [directory / name, directory / f"{name}.gz"]
            existing = [path for path in candidates if path.is_file()]
            if existing:
                found[key] = existing[0]
        if len(found) == len(IDX_FILE_NAMES):
            return found
    return None


def idx_image_counts(paths: dict[str, Path]) -> tuple[int, int]:
    """(training, test) images the four IDX files hold, from their headers alone (checked: magic
    numbers, 28x28 images, as many labels as images, file lengths); MNISTFormatError if not."""
    counts = []
    for kind in ("train", "test"):
        images, labels = paths[f"{kind}_images"], paths[f"{kind}_labels"]
        n, rows, cols = idx_sizes(images, IMAGES_MAGIC, n_sizes=3)
        if (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE):
            raise MNISTFormatError(f"{images}: images of {rows}x{cols}, expected {IMAGE_SIDE}x{IMAGE_SIDE}")
        (n_labels,) = idx_sizes(labels, LABELS_MAGIC, n_sizes=1)
        if n_labels != n:
            raise MNISTFormatError(f"{n} {kind} images but {n_labels} {kind} labels")
        counts.append(n)
    return counts[0], counts[1]

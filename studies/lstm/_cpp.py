"""The compiled CPU recurrence (csrc/hdetach_cpu.cpp): built on first use, Python path as fallback.

``HDETACH_LSTM_KERNEL`` picks the implementation of a layer's recurrences on CPU float32/float64
tensors: ``auto`` (default) uses the compiled one when it builds and falls back to the Python loops
with one logged warning when it does not (no compiler, say); ``cpp`` requires it and raises when it
cannot be built; ``python`` never builds it. Other tensors (CUDA, other dtypes) always take the
Python path, on accelerators with its masks kept on the device. The build (about 20 s, once
per kernel source; scripts/setup runs it ahead) goes to ``$TORCH_EXTENSIONS_DIR``, else torch's
default extensions root, in a folder named by a hash of the sources and the build settings.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import os
import platform
import shutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from studies.lstm.errors import KernelBuildError

log = logging.getLogger(__name__)

KERNEL_ENV = "HDETACH_LSTM_KERNEL"
# accelerator: a CPU runs the Python recurrence the way a GPU does (studies.lstm._kernel.cpu_as_accelerator)
KERNEL_CHOICES = ("auto", "cpp", "python", "accelerator")
EXTENSION_NAME = "hdetach_lstm_cpu"
SOURCE_DIR = Path(__file__).parent / "csrc"
# -fno-trapping-math lets the compiler if-convert, hence vectorise, the clamps in exp: it only
# forgoes floating-point exception flags, no value changes (unlike -ffast-math). No -march: the
# AVX2 variant is chosen at run time (see the .cpp), so the build runs on any CPU. -fopenmp:
# at::parallel_for hands batch slices to torch's own OpenMP threads (the same libgomp.so.1).
CFLAGS = ["-O3", "-fno-trapping-math", "-fopenmp"]
LDFLAGS = ["-fopenmp"]


def kernel_choice() -> str:
    choice = os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"{KERNEL_ENV} must be one of {', '.join(KERNEL_CHOICES)}, got {choice!r}")
    return choice


@functools.cache
def _build() -> tuple[Any, BaseException | None]:
    """Compile (or reuse) and load the extension, once per process: (ops, None) or (None, error)."""
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:
        try:  # the PyPI ninja package (a dependency) lives in the venv's bin/, maybe not on PATH
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass
    build_dir = build_directory()
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        # pytest turns warnings into errors, and a compiler notice must not break a run: log them.
        with warnings.catch_warnings(record=True) as caught, _exclusive(build_dir):
            warnings.simplefilter("always")
            # torch's own build lock is a plain file: a process killed while loading (a SIGKILLed
            # worker) leaves it behind, and every later load would wait on it forever. Under our
            # flock, which dies with its process, any such file is stale.
            (build_dir / "lock").unlink(missing_ok=True)
            cpp_extension.load(
                name=EXTENSION_NAME,
                sources=[str(SOURCE_DIR / "hdetach_cpu.cpp")],
                extra_cflags=list(CFLAGS),  # copies: torch appends its own flags to these lists
                extra_ldflags=list(LDFLAGS),
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=False,
            )
        for w in caught:
            log.info("building %s: %s", EXTENSION_NAME, w.message)
        return torch.ops.hdetach_lstm, None
    except Exception as error:
        return None, error


def build_directory() -> Path:
    """Where the extension is built: ``$TORCH_EXTENSIONS_DIR`` if set, else torch's default extensions
    root, in a folder named by the Python and torch versions and build_key() of the kernel sources.

    Checkouts with different kernel sources on one machine so keep separate builds (sharing one
    folder, each rebuilt it over the other's whenever it loaded), and checkouts with identical
    sources share one. Folders of old sources are never removed (a few MB each).
    """
    from torch.utils import cpp_extension

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    version = f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}"
    return Path(root) / f"{EXTENSION_NAME}-{version}-{build_key(SOURCE_DIR)}"


def kernel_sources(source_dir: Path) -> list[Path]:
    """Every file under source_dir (the .cpp and the headers it includes), hidden and backup files aside."""
    return sorted(
        path
        for path in source_dir.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(source_dir).parts)
        and not path.name.endswith("~")
    )


def build_key(source_dir: Path) -> str:
    """A short hash of what goes into the build: the names (relative to source_dir) and bytes of
    kernel_sources(source_dir), the compile and link flags, the compiler (``CXX``), the machine,
    Python's ABI and torch's version. Where source_dir is does not count."""
    digest = hashlib.sha256()

    def part(text: str | bytes) -> None:  # length-prefixed: different inputs never run together alike
        data = text.encode() if isinstance(text, str) else text
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)

    for setting in (
        " ".join(CFLAGS),
        " ".join(LDFLAGS),
        os.environ.get("CXX", ""),
        platform.machine(),
        sys.implementation.cache_tag or "",
        getattr(sys, "abiflags", ""),
        torch.__version__,
        str(torch.version.cuda),
        str(torch.version.hip),
    ):
        part(setting)
    for source in kernel_sources(source_dir):
        part(source.relative_to(source_dir).as_posix())
        part(source.read_bytes())
    return digest.hexdigest()[:16]


@contextmanager
def _exclusive(build_dir: Path) -> Iterator[None]:
    """One loader at a time per build directory, across processes; released if its holder dies."""
    with open(build_dir / "hdetach.flock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


def cpp_ops() -> Any | None:
    """The compiled ops (``recurrence_forward``, ``recurrence_backward``) if the choice allows and they build.

    With ``cpp`` a build failure raises; with ``auto`` it is logged once and None is returned.
    """
    choice = kernel_choice()
    if choice in ("python", "accelerator"):
        return None
    ops, error = _build()
    if error is not None:
        if choice == "cpp":
            raise KernelBuildError(f"{KERNEL_ENV}=cpp but the CPU extension could not be built") from error
        _warn_fallback(error)
    return ops


def compiled_ops() -> Any:
    """The ops namespace, for callers that uses_cpp() has sent down the C++ path."""
    ops, error = _build()
    if ops is None:
        raise KernelBuildError("the h-detach LSTM's CPU extension could not be built") from error
    return ops


def _reason(error: BaseException) -> str:
    """The first line of a build error (the full compiler output can run to pages)."""
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


@functools.cache
def _warn_fallback(error: BaseException) -> None:
    log.warning("h-detach LSTM: C++ CPU kernel unavailable (%s); using the Python recurrence", _reason(error))
    log.debug("C++ CPU kernel build failure", exc_info=error)


def prebuild() -> None:
    """Build the extension ahead of its first use (scripts/setup), whatever HDETACH_LSTM_KERNEL says."""
    _, error = _build()
    if error is None:
        print("h-detach LSTM: C++ CPU kernel ready")
    else:
        print(f"h-detach LSTM: C++ CPU kernel unavailable ({_reason(error)}); the Python path will be used")


def uses_cpp(x: torch.Tensor) -> bool:
    """Whether the recurrence over tensors like x runs in C++: CPU float32/float64, and the choice allows."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    return cpp_ops() is not None

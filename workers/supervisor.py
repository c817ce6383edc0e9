"""One supervisor, several worker processes: one per device entry (times `per_device`).

`hdetach worker --device all` (every visible CUDA device) or `--device cuda:0,cuda:2` (a list;
`cpu,cpu` works too) starts each child as `python -m hdetach worker --device <one device> ...`
with the other options passed through, in its own process group (a Ctrl-C in the terminal
reaches the supervisor only, which forwards it) and, on Linux, asked to receive SIGTERM should
the supervisor die. The supervisor imports no torch for a list; for `all` it asks
`torch.cuda.device_count()`, which does not initialise CUDA.

When a child ends:

- exit 0 (`--exit-when-idle` or `--max-packs` done): finished, not restarted;
- exit 3 (`EXIT_DEVICE_UNUSABLE`: its device failed the start-up check): not restarted, one line;
- exit 2 (bad arguments; they would be as bad the next time): not restarted;
- anything else (4 halted after infrastructure failures, 5 a CUDA error that wants a fresh
  process, 1 a crash, a death by signal): restarted after a back-off of 1 s, doubling per death
  up to 60 s, and back to 1 s once a child had run `stable_seconds` (120 s) before it died.

SIGTERM or SIGINT to the supervisor is forwarded to every child as SIGTERM (each finishes its
evaluation interval and gives its jobs back) and cancels pending restarts; a second one forwards
a second SIGTERM (a worker then exits at once). The supervisor waits for every child, then exits.

The exit code, from each child slot's last outcome (a slot that died and was restarted counts
only by what its restarted process did later):

- 0 when every child ended 0 or was stopped by the forwarded signal;
- 3 when every child's device was unusable;
- otherwise the last abnormal exit code that was not recovered (a death by signal N as 128 + N).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("hdetach.supervisor")

EXIT_USAGE = 2  # bad arguments (typer's usage errors and `hdetach.cli.fail`)
EXIT_DEVICE_UNUSABLE = 3  # as workers.worker (not imported: it imports torch)
STOPPED_BY_SIGNAL = frozenset({0, -signal.SIGTERM, 128 + signal.SIGTERM})  # after a forwarded SIGTERM


class NoDevicesError(ValueError):
    """`--device all` with no CUDA device visible."""


def expand_devices(device: str, per_device: int, count_cuda: Callable[[], int] | None = None) -> list[str]:
    """The device of each child: `all` is every visible CUDA device, a comma-separated list its
    entries, each repeated `per_device` times. ValueError for an empty entry or `all` in a list."""
    if per_device < 1:
        raise ValueError("--per-device must be at least 1")
    entries = [entry.strip() for entry in device.split(",")]
    if any(not entry for entry in entries):
        raise ValueError(f"--device {device!r} has an empty entry")
    if "all" in entries:
        if len(entries) > 1:
            raise ValueError("--device all cannot be part of a list")
        count = (count_cuda or visible_cuda_devices)()
        if count == 0:
            raise NoDevicesError("--device all: no CUDA device is visible (torch.cuda.device_count() is 0)")
        entries = [f"cuda:{i}" for i in range(count)]
    return [entry for entry in entries for _ in range(per_device)]


def visible_cuda_devices() -> int:
    """torch.cuda.device_count(): NVML (or the driver), without initialising CUDA in this process."""
    import torch

    return torch.cuda.device_count()


def needs_supervisor(device: str, per_device: int) -> bool:
    """A single device with one worker runs in the calling process, as it always has."""
    return per_device > 1 or "," in device or device.strip() == "all"


def child_command(
    device: str,
    *,
    database_url: str | None,
    pack: int,
    threads: int | None,
    exit_when_idle: bool,
    max_packs: int | None,
    max_infra_failures: int,
    wait_for_database: float = 120.0,
) -> list[str]:
    """`python -m hdetach worker` on one device, with the supervisor's other options."""
    command = [sys.executable, "-m", "hdetach", "worker", "--device", device, "--pack", str(pack)]
    command += [
        "--max-infra-failures",
        str(max_infra_failures),
        "--wait-for-database",
        f"{wait_for_database:g}",
    ]
    if database_url is not None:
        command += ["--database-url", database_url]
    if threads is not None:
        command += ["--threads", str(threads)]
    if max_packs is not None:
        command += ["--max-packs", str(max_packs)]
    if exit_when_idle:
        command.append("--exit-when-idle")
    return command


def signal_code(returncode: int) -> int:
    """A process's exit code as a shell reports it: death by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def combined_exit_code(outcomes: Sequence[tuple[int, bool]]) -> int:
    """The supervisor's exit code from each slot's last outcome, (exit code, stopped by us), in the
    order they happened: 0 if all ended 0 or were stopped, 3 if every device was unusable, else
    the last abnormal code."""
    if all(code == 0 or stopped for code, stopped in outcomes):
        return 0
    if all(code == EXIT_DEVICE_UNUSABLE and not stopped for code, stopped in outcomes):
        return EXIT_DEVICE_UNUSABLE
    abnormal = [code for code, stopped in outcomes if code != 0 and not stopped]
    return signal_code(abnormal[-1])


@dataclass
class Slot:
    """One child position: a device and the process running there now, if any."""

    number: int
    device: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = 0.0  # the next restart's delay; 0 until the first death
    restart_at: float | None = None  # when a dead child is started again
    signalled: bool = False  # the running process was sent the forwarded SIGTERM
    outcome: tuple[int, bool] | None = None  # the last exit: (return code, stopped by the forwarded signal)
    ended_at: float = 0.0
    finished: bool = False  # nothing more will run here
    restarts: int = 0


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A child's pre-exec hook asking Linux for SIGTERM when the supervisor dies (best effort)."""
    if not sys.platform.startswith("linux"):
        return None

    def hook() -> None:
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the supervisor died before the request: stop now
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


class Supervisor:
    def __init__(
        self,
        commands: Sequence[tuple[str, list[str]]],
        *,
        first_backoff: float = 1.0,
        max_backoff: float = 60.0,
        stable_seconds: float = 120.0,
        poll_seconds: float = 0.2,
    ):
        self.slots = [Slot(k, device, command) for k, (device, command) in enumerate(commands, start=1)]
        self.first_backoff, self.max_backoff = first_backoff, max_backoff
        self.stable_seconds, self.poll_seconds = stable_seconds, poll_seconds
        self.signals = 0  # stop signals received
        self._forwarded = 0  # of those, how many were forwarded
        self._wake = threading.Event()

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        """Start every child, look after them until none is left to run; the exit code."""
        previous = self._install_signal_handlers()
        try:
            return self._supervise()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _supervise(self) -> int:
        for slot in self.slots:
            self._start(slot)
        while not all(slot.finished for slot in self.slots):
            self._forward_signals()
            now = time.monotonic()
            for slot in self.slots:
                if slot.process is not None and (code := slot.process.poll()) is not None:
                    self._ended(slot, code, now)
                elif slot.restart_at is not None and now >= slot.restart_at and not self.signals:
                    slot.restart_at = None
                    slot.restarts += 1
                    self._start(slot, restart=True)
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
        ended = sorted((s for s in self.slots if s.outcome is not None), key=lambda s: s.ended_at)
        code = combined_exit_code([s.outcome for s in ended if s.outcome is not None])
        log.info("all %d workers ended; exit code %d", len(self.slots), code)
        return code

    def _start(self, slot: Slot, restart: bool = False) -> None:
        slot.process = subprocess.Popen(
            slot.command, process_group=0, preexec_fn=_die_with_parent(os.getpid())
        )
        slot.started_at, slot.signalled = time.monotonic(), False
        log.info(
            "%s worker %d/%d on %s (pid %d)",
            "restarted" if restart else "started",
            slot.number,
            len(self.slots),
            slot.device,
            slot.process.pid,
        )

    def _ended(self, slot: Slot, returncode: int, now: float) -> None:
        assert slot.process is not None
        pid, ran = slot.process.pid, now - slot.started_at
        stopped = slot.signalled and returncode in STOPPED_BY_SIGNAL
        slot.process, slot.outcome, slot.ended_at = None, (returncode, stopped), now
        how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited {returncode}"
        where = f"worker {slot.number}/{len(self.slots)} on {slot.device} (pid {pid}) {how} after {ran:.1f} s"
        if self.signals:
            log.info("%s%s", where, "" if stopped else "; stopping, not restarted")
            slot.finished = True
        elif returncode == 0:
            log.info("%s; done, not restarted", where)
            slot.finished = True
        elif returncode == EXIT_DEVICE_UNUSABLE:
            log.error("%s: device %s is unusable; not restarted", where, slot.device)
            slot.finished = True
        elif returncode == EXIT_USAGE:
            log.error("%s: bad arguments; not restarted", where)
            slot.finished = True
        else:
            if slot.backoff == 0 or ran >= self.stable_seconds:
                slot.backoff = self.first_backoff
            delay = slot.backoff
            slot.backoff = min(slot.backoff * 2, self.max_backoff)
            slot.restart_at = now + delay
            log.warning("%s; restarting in %.1f s", where, delay)

    # -- signals ----------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        """Count stop signals (forwarded from the loop); returns the handlers they replaced."""

        def handle(signum: int, frame: Any) -> None:
            self.request_stop()

        return {signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)}

    def request_stop(self) -> None:
        """What a SIGTERM does, for callers in another thread."""
        self.signals += 1
        self._wake.set()

    def _forward_signals(self) -> None:
        """Outside the handler: one SIGTERM to every child per stop signal received."""
        while self._forwarded < self.signals:
            self._forwarded += 1
            running = [s for s in self.slots if s.process is not None]
            log.warning(
                "stop signal %d: forwarding SIGTERM to %d workers%s",
                self._forwarded,
                len(running),
                "" if self._forwarded > 1 else " (a second signal makes them exit at once)",
            )
            for slot in self.slots:
                if slot.process is not None:
                    self._signal(slot)
                elif not slot.finished:  # waiting to be restarted: not any more
                    slot.restart_at, slot.finished = None, True
                    log.info(
                        "worker %d/%d on %s: restart cancelled", slot.number, len(self.slots), slot.device
                    )

    def _signal(self, slot: Slot) -> None:
        assert slot.process is not None
        try:
            slot.process.send_signal(signal.SIGTERM)
            slot.signalled = True
        except ProcessLookupError:  # already gone; poll() reports it
            pass

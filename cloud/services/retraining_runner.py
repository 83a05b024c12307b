"""The subprocess boundary of the retraining job (docs/retraining.md, "The entry-point contract").

Parent side, :func:`run_training`: start the entry point in a child process of its own session (so
its whole process group can be killed), with stdout and stderr going to a log file in the work
directory, wait up to the time limit, and turn every way it can end into a :class:`TrainingFailed`
with a precise code, or return the log tail.

Child side, ``python -m edgefleet.cloud.services.retraining_runner [options] request.json``: limit
the address space (``RLIMIT_AS``), ask to be killed with the controller (``PR_SET_PDEATHSIG``), then
either import ``package.module:function`` and call it with the :class:`TrainingRequest`, or ``exec``
the command with the request path as its last argument. What went wrong is written to a small status
file the parent reads. The child side imports nothing heavy: only the entry point does.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefleet.cloud.vocabulary import TrainingFailure
from edgefleet.protocol.errors import EdgeFleetError
from edgefleet.protocol.files import atomic_write
from edgefleet.protocol.training import TrainingRequest
from edgefleet.protocol.vocabulary import Reason

LOG_FILE = "train.log"
STATUS_FILE = "runner-status.json"
LOG_TAIL_BYTES = 8192
SINGLE_THREADED = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""Set in the child unless the controller's environment sets them: the machines are shared, and
multi-threaded BLAS reserves address space per thread (which counts against the memory limit)."""
_OOM_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")
_PR_SET_PDEATHSIG = 1
STOP_POLL_S = 0.5
"""How often a waiting job looks whether the controller is stopping."""


class TrainingFailed(EdgeFleetError):
    """The entry point did not produce a model; ``code`` says how (:class:`TrainingFailure`, or
    ``timeout``), ``log_tail`` is the end of its output."""

    code: str = TrainingFailure.TRAINING_FAILED

    def __init__(self, message: str, *, code: str, log_tail: str, hint: str | None = None) -> None:
        super().__init__(message, code=code, where="training", hint=hint)
        self.log_tail = log_tail


@dataclass(frozen=True)
class EntryPoint:
    """A ``package.module:function`` (run by this module in the child) or a command (exec'd)."""

    callable: str | None = None
    command: tuple[str, ...] | None = None

    def describe(self) -> str:
        return self.callable or " ".join(self.command or ())


def child_argv(entry: EntryPoint, request_path: Path, *, memory_mb: int, python: str = sys.executable) -> list[str]:
    """The command line of the child: always this runner, which applies the limits first."""
    argv = [python, "-m", __name__, "--memory-mb", str(memory_mb), "--status", str(request_path.parent / STATUS_FILE)]
    if entry.callable is not None:
        return [*argv, "--entry-point", entry.callable, str(request_path)]
    return [*argv, "--exec", "--", *(entry.command or ()), str(request_path)]


def run_training(entry: EntryPoint, request_path: Path, *, timeout_s: float, memory_mb: int,
                 python: str = sys.executable, stopping: threading.Event | None = None) -> str:
    """Run the entry point on ``request_path`` (``request.json`` in its work directory) to the end;
    return the tail of its output. Raises :class:`TrainingFailed` when it fails, runs past
    ``timeout_s`` or past ``memory_mb``, or ``stopping`` is set (the controller stops): in the last
    two cases its process group is killed."""
    work_dir = request_path.parent
    log_path = work_dir / LOG_FILE
    status_path = work_dir / STATUS_FILE
    status_path.unlink(missing_ok=True)
    env = {**SINGLE_THREADED, **os.environ}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(child_argv(entry, request_path, memory_mb=memory_mb, python=python), cwd=work_dir,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            rc, ended = _wait(proc, timeout_s, stopping)
        finally:
            _kill_group(proc.pid)   # past a limit, on a stop, or whatever it left running in its group
            proc.wait()
    tail = log_tail(log_path)
    if ended == Reason.TIMEOUT:
        raise TrainingFailed(f"{entry.describe()} ran past its time limit of {timeout_s:g} s and was killed",
                             code=Reason.TIMEOUT, log_tail=tail, hint="raise [training] timeout_s, or train faster")
    if ended == Reason.INTERRUPTED:
        raise TrainingFailed(f"the controller stopped: {entry.describe()} was killed", code=Reason.INTERRUPTED,
                             log_tail=tail, hint="start the job again (edgefleet retrain)")
    status = _read_status(status_path)
    if status is not None:
        code, message = status
        hints = {TrainingFailure.MEMORY_LIMIT: "raise [training] memory_mb, or use less memory",
                 TrainingFailure.ENTRY_POINT_NOT_FOUND: "check [training] entry_point / command"}
        raise TrainingFailed(message, code=code, log_tail=tail, hint=hints.get(TrainingFailure(code)))
    if rc != 0:
        last = tail.strip().splitlines()[-1] if tail.strip() else ""
        what = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
        if any(marker in last for marker in _OOM_MARKERS):
            raise TrainingFailed(f"{entry.describe()} ran out of memory (limit {memory_mb} MB): {last}",
                                 code=TrainingFailure.MEMORY_LIMIT, log_tail=tail,
                                 hint="raise [training] memory_mb, or use less memory")
        raise TrainingFailed(f"{entry.describe()} {what}" + (f": {last}" if last else ""),
                             code=TrainingFailure.TRAINING_FAILED, log_tail=tail)
    return tail


def _wait(proc: subprocess.Popen[bytes], timeout_s: float, stopping: threading.Event | None) -> tuple[int, str | None]:
    """``(returncode, None)`` once the child exits, or ``(-1, timeout | interrupted)`` first."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return -1, Reason.TIMEOUT
        if stopping is not None and stopping.is_set():
            return -1, Reason.INTERRUPTED
        try:
            return proc.wait(timeout=min(left, STOP_POLL_S)), None
        except subprocess.TimeoutExpired:
            continue


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def log_tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    """The last ``limit`` bytes of a log, from a line start where possible."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - limit))
            data = fh.read()
    except OSError:
        return ""
    if size > limit and b"\n" in data:
        data = data.split(b"\n", 1)[1]
    return data.decode("utf-8", errors="replace")


def _read_status(path: Path) -> tuple[str, str] | None:
    try:
        status = json.loads(path.read_bytes())
        code, message = str(status["code"]), str(status["message"])
        TrainingFailure(code)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return TrainingFailure.TRAINING_FAILED.value, f"the runner's status file {path.name} is unreadable"
    return code, message


# --------------------------------------------------------------------------- the child

def _write_status(path: Path, code: TrainingFailure, message: str) -> None:
    atomic_write(path, json.dumps({"code": code, "message": message}).encode())


def _limit_memory(memory_mb: int) -> None:
    import resource

    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _die_with_parent() -> None:
    """Linux: SIGKILL this process (and what it execs) when the controller thread that started it ends."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _last_line(exc: BaseException) -> str:
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def resolve(spec: str) -> Callable[[TrainingRequest], object]:
    """The function ``package.module:function`` names; ImportError / AttributeError / TypeError otherwise."""
    module_name, _, attr = spec.partition(":")
    fn = getattr(importlib.import_module(module_name), attr)
    if not callable(fn):
        raise TypeError(f"{spec} is not callable")
    return fn  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="retraining_runner", description="run one training entry point")
    parser.add_argument("--memory-mb", type=int, required=True)
    parser.add_argument("--status", type=Path, required=True)
    parser.add_argument("--entry-point")
    parser.add_argument("request", nargs="?")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = None
    if "--exec" in argv:   # everything after it is the command (its own options included)
        at = argv.index("--exec")
        argv, command = argv[:at], argv[at + 1:]
        command = command[1:] if command[:1] == ["--"] else command
    args = parser.parse_args(argv)
    _limit_memory(args.memory_mb)
    _die_with_parent()
    if command:
        try:
            os.execvp(command[0], command)
        except OSError as exc:
            _write_status(args.status, TrainingFailure.ENTRY_POINT_NOT_FOUND,
                          f"cannot run {command[0]!r}: {exc.strerror}")
            return 127
    try:
        request = TrainingRequest.load(args.request)
        fn = resolve(args.entry_point)
    except MemoryError:
        _write_status(args.status, TrainingFailure.MEMORY_LIMIT,
                      f"importing {args.entry_point} ran out of memory (limit {args.memory_mb} MB)")
        return 1
    except EdgeFleetError as exc:
        _write_status(args.status, TrainingFailure.TRAINING_FAILED, str(exc))
        return 1
    except Exception as exc:
        traceback.print_exc()
        _write_status(args.status, TrainingFailure.ENTRY_POINT_NOT_FOUND,
                      f"cannot load the entry point {args.entry_point}: {_last_line(exc)}")
        return 1
    try:
        fn(request)
    except MemoryError:
        traceback.print_exc()
        _write_status(args.status, TrainingFailure.MEMORY_LIMIT,
                      f"{args.entry_point} ran out of memory (limit {args.memory_mb} MB)")
        return 1
    except BaseException as exc:  # SystemExit too: every way out is reported
        traceback.print_exc()
        _write_status(args.status, TrainingFailure.TRAINING_FAILED, f"{args.entry_point} raised {_last_line(exc)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

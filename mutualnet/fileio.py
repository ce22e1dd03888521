"""Atomic file writes, directory locks, SIGTERM clean-up and the fault-injection hook.

Atomic writes: a temp file in the target's directory, moved into place on success. A crash,
Ctrl-C or a full disk leaves the previous file (or none) and no half-written one.
(The torch-free deployment side has its own twin in ``export.manifest``: it may not import
this package.)
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path beside ``target`` (parents created); it replaces ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(target: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``target`` atomically."""
    with atomic_path(target) as tmp:
        write(tmp)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- directory locks ----------------------------------------------------------------------------

def lock_path(directory: str | os.PathLike[str]) -> Path:
    """The lock file of ``directory``: ``.NAME.lock`` beside it (so that taking the lock
    never creates, fills or moves the directory itself)."""
    d = Path(directory).expanduser().absolute()
    return d.with_name(f".{d.name}.lock")


def _holder_record(command: str) -> bytes:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return (json.dumps(record) + "\n").encode()


def _describe_holder(path: Path) -> str:
    try:
        record = json.loads(path.read_text())
        return (f"pid {record['pid']} on {record['host']} ({record['command']}, since "
                f"{record['since']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class _LockFileReplaced(Exception):
    """The lock file was removed or replaced between opening and locking it: try again."""


@contextmanager
def directory_lock(directory: str | os.PathLike[str], command: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` (a run or export folder) for the ``with`` body.

    The lock file (:func:`lock_path`) names its holder: pid, host, ``command`` and since when.
    A second writer gets a :class:`~mutualnet.errors.UsageError` (exit 2) naming that holder;
    a lock left by a killed process is released by the kernel and simply taken over. The
    lock file is removed on release (a locker that opened it just before checks, once it
    holds the lock, that the path is still its file, and else tries again).
    """
    from filelock import FileLock, Timeout

    from .errors import UsageError

    path = lock_path(directory)
    record = _holder_record(command)

    def claim(fd: int) -> None:
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            raise _LockFileReplaced
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)

    lock = FileLock(path, blocking=False, on_acquired=claim, fallback_to_soft=False)
    for _attempt in range(20):
        try:
            lock.acquire()
            break
        except _LockFileReplaced:
            continue
        except Timeout:
            raise UsageError(f"{Path(directory)} is in use by {_describe_holder(path)}; wait "
                             f"for it to finish or pick another --out (lock file {path})") from None
        except OSError as e:
            raise UsageError(f"cannot lock {Path(directory)} ({e.strerror or e}: {path}); "
                             "check that its parent folder exists and is writable, or pick "
                             "another --out") from None
    else:
        raise UsageError(f"cannot lock {Path(directory)}: its lock file {path} keeps being "
                         "replaced; stop the other writers and retry")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        lock.release()


# -- signals ------------------------------------------------------------------------------------

@contextmanager
def terminate_as_exception() -> Iterator[None]:
    """Turn SIGTERM into an :class:`~mutualnet.errors.Interrupted` exception for the body, so
    that its ``finally`` clauses (removing temporary files) run. A no-op off the main thread."""
    import signal
    import threading

    from .errors import Interrupted

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- fault injection (tests) --------------------------------------------------------------------

#: ``MUTUALNET_FAULT=POINT:ACTION[:N],...`` makes the N-th (default first) pass of a named point
#: fail: ``kill`` (SIGKILL itself), ``term`` (SIGTERM itself) or ``enospc`` (raise "No space
#: left on device"). The fault tests use it to stop a save or an export at chosen points.
FAULT_ENV = "MUTUALNET_FAULT"
_fault_passes: dict[str, int] = {}


def fault_point(name: str) -> None:
    """A named point where :data:`FAULT_ENV` may inject a fault; free when the variable is unset."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    _fault_passes[name] = _fault_passes.get(name, 0) + 1
    for item in spec.split(","):
        point, _, rest = item.strip().partition(":")
        action, _, nth = rest.partition(":")
        if point == name and _fault_passes[name] == int(nth or 1):
            _inject(action, name)


def _inject(action: str, name: str) -> None:
    import errno
    import signal

    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"<fault {name}>")

"""One run per workdir: an exclusive lock held for the run's life.

``workdir/.gmcl.lock`` is locked with ``fcntl.flock`` (released by the kernel when the holder
exits, however it exits) and holds the holder's PID, host and start time. A second run on the
same workdir is refused at once, naming the holder. A lock file left by a holder that died (its
flock is gone) is reported and taken over. ``flock`` is advisory and local: on a network file
system that does not support it, two hosts are not kept apart. In a multi-host run (several
``jax.process_index()``) only process 0 takes the lock: the processes of one run share a workdir.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from typing import Callable, Optional

LOCK_NAME = ".gmcl.lock"


class WorkdirBusy(RuntimeError):
  """Raised when another live run holds the workdir's lock."""


class WorkdirLock:
  """``with WorkdirLock(workdir):`` holds the workdir's lock (see the module docstring)."""

  def __init__(self, workdir: str, log: Callable[[str], None] = print, enabled: bool = True):
    self.path = os.path.join(workdir, LOCK_NAME)
    self.log, self.enabled = log, enabled
    self._fd: Optional[int] = None

  def _holder(self) -> str:
    try:
      with open(self.path) as f:
        h = json.load(f)
      return f"PID {h.get('pid')} on {h.get('host')} (since {h.get('started')})"
    except (OSError, ValueError):
      return "an unknown process"

  def acquire(self) -> None:
    if not self.enabled:
      return
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
          raise WorkdirBusy(f"{os.path.dirname(self.path)} is in use by another run: {self._holder()}. "
                            "Wait for it, stop it, or choose another workdir.") from None
        raise
      try:  # the holder may have released (and removed) the file between our open and flock
        if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
          break
      except FileNotFoundError:
        pass
      os.close(fd)
    stale = os.fstat(fd).st_size > 0
    if stale:
      self.log(f"gmcl: {self.path} was left by {self._holder()}, which no longer runs; taken over.")
    payload = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, payload, 0)
    os.fsync(fd)
    self._fd = fd

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.unlink(self.path)  # while still locked: no other run can hold it meanwhile
    except OSError:
      pass
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

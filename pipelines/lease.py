"""One run of a workflow id at a time: a lease in the workflow's storage, renewed by a heartbeat.

`lease.json` names its holder (host, pid, start time, a random token). A run takes the lease before
it starts (before Ray), renews it every `ttl / 4` seconds from a background thread, and deletes it
when it ends, however it ends, short of being killed. A second run of the same id finds a live lease
and is refused with the holder's name (LeaseHeld). A lease is stale, and is taken over, when it was
not renewed for `ttl` seconds (a driver killed with SIGKILL, a machine that went away), or at once
when its holder is a dead process on this host, so a rerun after a crash still resumes as before.

Taking, renewing and releasing are compare-and-swap operations, so two runs started together
cannot both win: on S3 a conditional PUT (`If-None-Match: *` to create, `If-Match: <etag>` to
replace); in a local folder an exclusive `flock` around read-decide-write. The age of an S3 lease is
the server's clock minus its Last-Modified (no clock skew between hosts); a local one's is its mtime.
A run whose lease was taken over (it was paused for longer than the TTL) writes nothing more.
"""

from __future__ import annotations

import _thread
import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Optional

from infra.storage import Store, s3_client, split_s3

log = logging.getLogger(__name__)
LEASE = "lease.json"
TTL_S = float(os.environ.get("PRETRAIN_LEASE_TTL_S", "60"))


class LeaseHeld(RuntimeError):
    """Another run holds the workflow's lease."""


class LeaseLost(RuntimeError):
    """This run's lease expired and another run took it over."""


def _process_start(pid: int) -> Optional[float]:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001  (no such process, or no permission to look)
        return None


def describe(holder: dict, age_s: float, ttl_s: float) -> str:
    started = datetime.datetime.fromtimestamp(holder.get("started", 0)).isoformat(timespec="seconds")
    return (
        f"host {holder.get('host')}, pid {holder.get('pid')}, started {started}; lease renewed "
        f"{age_s:.0f} s ago, stale after {ttl_s:.0f} s without renewal"
    )


class Lease:
    def __init__(self, store: Store, what: str, ttl_s: Optional[float] = None):
        self.store, self.what, self.ttl = store, what, ttl_s or TTL_S
        self.me = {
            "token": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "proc_start": _process_start(os.getpid()),
            "started": time.time(),
        }
        self.held = False
        self.lost = False
        self._etag: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- storage: (holder, age in s, version) or None; conditional writes --------------------------
    def _read(self):
        if not self.store.s3:
            path = Path(self.store.uri(LEASE))
            try:
                return json.loads(path.read_text()), time.time() - path.stat().st_mtime, None
            except (FileNotFoundError, ValueError):
                return None
        from botocore.exceptions import ClientError

        bucket, key = split_s3(self.store.uri(LEASE))
        try:
            got = s3_client().get_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        date = got["ResponseMetadata"]["HTTPHeaders"].get("date")
        server_now = parsedate_to_datetime(date) if date else datetime.datetime.now(datetime.timezone.utc)
        age = (server_now - got["LastModified"]).total_seconds()
        try:
            holder = json.loads(got["Body"].read())
        except ValueError:
            holder = {}
        return holder, age, got["ETag"]

    def _write(self, expect: Optional[str], create: bool) -> bool:
        """Write our lease: create it (`create`), or replace the version `expect`. False when
        another run wrote first."""
        body = json.dumps(dict(self.me, renewed=time.time(), ttl_s=self.ttl))
        if not self.store.s3:
            self.store.write_text(LEASE, body)  # under the flock: nobody else writes meanwhile
            return True
        from botocore.exceptions import ClientError

        bucket, key = split_s3(self.store.uri(LEASE))
        cond = {"IfNoneMatch": "*"} if create else {"IfMatch": expect}
        try:
            self._etag = s3_client().put_object(Bucket=bucket, Key=key, Body=body.encode(), **cond)["ETag"]
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in (
                "PreconditionFailed",
                "412",
                "ConditionalRequestConflict",
                "NoSuchKey",
                "404",
            ):
                return False
            raise

    @contextlib.contextmanager
    def _exclusive(self):
        """Local storage: an exclusive lock for read-decide-write (S3's writes are conditional)."""
        if self.store.s3:
            yield
            return

        with open(Path(self.store.root) / ".lease.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _stale(self, holder: dict, age: float) -> bool:
        if age > float(holder.get("ttl_s", self.ttl)):
            return True
        if holder.get("host") == self.me["host"] and isinstance(holder.get("pid"), int):
            start = _process_start(holder["pid"])  # a dead process here, or its pid reused since
            return start is None or (holder.get("proc_start") is not None and abs(start - holder["proc_start"]) > 1)
        return False

    # -- the lease -------------------------------------------------------------------------------
    def acquire(self) -> None:
        if self.held:
            return
        with self._exclusive():
            current = self._read()
            if current is None:
                ok = self._write(None, create=True)
                if ok and self.store.s3 and self._write(None, create=True):
                    log.warning(
                        "%s: the S3 store at %s ignores conditional writes (If-None-Match): two runs "
                        "started in the same instant could both proceed",
                        self.what,
                        self.store.root,
                    )
            else:
                holder, age, version = current
                if holder.get("token") != self.me["token"] and not self._stale(holder, age):
                    raise LeaseHeld(
                        f"{self.what} is already running ({describe(holder, age, self.ttl)}); "
                        f"wait for it to end, or stop it, then run again"
                    )
                if holder.get("token") != self.me["token"]:
                    log.warning("%s: taking over a stale lease (%s)", self.what, describe(holder, age, self.ttl))
                ok = self._write(version, create=False)
        if not ok:  # another run took it between our read and our write
            current = self._read()
            holder, age, _ = current if current else ({}, 0.0, None)
            raise LeaseHeld(
                f"{self.what} is already running ({describe(holder, age, self.ttl)}); "
                f"wait for it to end, or stop it, then run again"
            )
        self.held, self.lost = True, False
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="workflow-lease", daemon=True)
        self._thread.start()

    def renew(self) -> bool:
        """Renew once; False (and `lost` set) when another run holds the lease now."""
        with self._exclusive():
            if self.store.s3:  # replaces our own last version only
                ok = self._write(self._etag, create=False)
            else:
                current = self._read()
                ok = current is not None and current[0].get("token") == self.me["token"] and self._write(None, False)
        self.lost = not ok
        return ok

    def _heartbeat(self) -> None:
        last_ok = time.time()
        while not self._stop.wait(self.ttl / 4):
            try:
                if not self.renew():
                    break
                last_ok = time.time()
            except Exception as e:  # noqa: BLE001  (storage briefly away: try again next beat)
                log.warning("%s: could not renew the lease: %s", self.what, e)
                if time.time() - last_ok > self.ttl:
                    self.lost = True
                    break
        if self.lost:
            log.error(
                "%s: the lease was taken over by another run (this one was paused for longer than "
                "%.0f s?): this run stops writing",
                self.what,
                self.ttl,
            )

            _thread.interrupt_main()

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self.held = False
        if self.lost:
            return
        try:
            with self._exclusive():
                current = self._read()
                if current is None or current[0].get("token") != self.me["token"]:
                    return
                if self.store.s3:
                    bucket, key = split_s3(self.store.uri(LEASE))
                    s3_client().delete_object(Bucket=bucket, Key=key)
                else:
                    Path(self.store.uri(LEASE)).unlink(missing_ok=True)
        except Exception as e:  # noqa: BLE001  (the lease expires by itself)
            log.warning("%s: could not release the lease (it expires after %.0f s): %s", self.what, self.ttl, e)


def holder_of(store: Store) -> Optional[str]:
    """ "<holder>" while a live lease is held on the workflow in `store`, else None (make status)."""
    lease = Lease(store, "")
    current = lease._read()
    if current is None or lease._stale(current[0], current[1]):
        return None
    return describe(current[0], current[1], float(current[0].get("ttl_s", lease.ttl)))

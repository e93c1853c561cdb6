"""A dead worker, said in one line of the driver's output.

Ray forwards every line a worker writes to the driver. When a worker dies of a signal, that is its
signal handler's and faulthandler's dump (every thread's stack: dozens of lines), the raylet's
"A worker died or was killed" paragraph (twice), the surviving ranks' tracebacks (their
collectives lost a peer) and Ray Train's controller's traceback. This filter, on the driver's
stream of worker lines, keeps the first of them as

    [train] rank 0 (pid 4559) died of SIGSEGV in __libc_malloc after step 840 (rank 0's last log line);
    its full log: /tmp/ray/session_.../logs/worker-...-4559.err

and drops the rest; they stay whole in the workers' log files, which the line names. Everything
else passes through unchanged.
"""

from __future__ import annotations

import glob
import re
import time
from pathlib import Path

RANK = re.compile(r"\[train\] rank (\d+)/\d+ on node")
STEP = re.compile(r"\[train\] \d\d:\d\d:\d\d step (\d+)/\d+")
SIGNAL = re.compile(r"\*\*\* (SIG[A-Z]+) received")
FATAL = re.compile(r"Fatal Python error: (.+)")
WHERE = re.compile(r"PC: @\s+\S+\s+\S+\s+(\S+)")
GLIBC = re.compile(
    r"^(malloc\(\)|free\(\)|realloc\(\)|munmap_chunk\(\)|double free|corrupted |malloc_consolidate|"
    r"tcache_thread_shutdown|[a-z_]+\(\): (?:invalid|corrupted|unaligned))"
)
DUMP = re.compile(
    r"^\s*(\*\*\* SIG|PC: @|@\s+0x|\[[^\]]*\] logging\.cc:\d+|Fatal Python error|Thread 0x|Current thread|"
    r"File \"|Extension modules|<no Python frame>|Stack \(most recent)|^\s*$"
)
RAYLET_DEATH = re.compile(r"A worker died or was killed.*Worker PID: (\d+).*?Worker exit detail: ([^.]*)", re.S)
AFTERMATH_S = 60.0  # after a death, other processes' tracebacks about it are its aftermath
AFTERMATH = re.compile(
    r"Traceback|ActorDiedError|Connection closed by peer|Connection reset by peer|"
    r"Graceful shutdown of backend failed|Error in training function|worker process has died|"
    r"^\s+File \"|^\s+\^|^\s+\S.*|^[A-Za-z_.]+(Error|Exception):"
)


class CrashFilter:
    def __init__(self, logs_dir: str, out=print):
        self.logs_dir, self.out = logs_dir, out
        self.rank: dict[str, int] = {}  # pid -> Ray Train rank
        self.last_step: int | None = None  # rank 0's last logged step
        self.dead: dict[str, float] = {}  # pid -> when its death was said
        self.last_death = 0.0

    def log_file(self, pid: str) -> str:
        found = sorted(glob.glob(str(Path(self.logs_dir) / f"worker-*-{pid}.err")))
        return found[-1] if found else f"{self.logs_dir}/worker-*-{pid}.err"

    def _say(self, pid: str, how: str) -> None:
        if pid in self.dead:
            return
        self.dead[pid] = self.last_death = time.time()
        rank = f"rank {self.rank[pid]}" if pid in self.rank else "a worker"
        step = f" after step {self.last_step} (rank 0's last log line)" if self.last_step is not None else ""
        self.out(f"[train] {rank} (pid {pid}) died {how}{step}; its full log: {self.log_file(pid)}", flush=True)

    def _crash(self, pid: str, lines: list[str]) -> bool:
        """Lines of a worker's own death (its signal handler, faulthandler, glibc): said once."""
        sig = next((m.group(1) for x in lines if (m := SIGNAL.search(x))), None)
        fatal = next((m.group(1).strip() for x in lines if (m := FATAL.search(x))), None)
        glibc = next((x.strip() for x in lines if GLIBC.search(x.strip())), None)
        if not (sig or fatal or glibc):
            return False
        where = next((m.group(1) for x in lines if (m := WHERE.search(x))), None)
        how = f"of {sig or fatal or 'SIGABRT'}"
        if where and where != "(unknown)":
            how += f" in {where}"
        if glibc:
            how += f" (glibc: {glibc})"
        self._say(pid, how)
        return True

    def filter(self, data: dict) -> dict | None:
        """The batch of worker lines to print (None: nothing of it)."""
        pid, lines = str(data.get("pid")), list(data.get("lines") or [])
        for x in lines:
            if m := RANK.search(x):
                self.rank[pid] = int(m.group(1))
            if (m := STEP.search(x)) and self.rank.get(pid, 0) == 0:
                self.last_step = int(m.group(1))
        if pid == "raylet":
            text = "\n".join(lines)
            m = RAYLET_DEATH.search(text)
            if m:
                self._say(m.group(1), f"(Ray: {m.group(2).strip()})")
                return None
        elif self._crash(pid, lines) or pid in self.dead:
            lines = [x for x in lines if not DUMP.search(x) and not GLIBC.search(x.strip())]
        elif time.time() - self.last_death < AFTERMATH_S:
            lines = [x for x in lines if not AFTERMATH.search(x)]
        if not lines:
            return None
        return {**data, "lines": lines}


def install() -> None:
    """Put the filter in front of Ray's printing of worker lines on this driver (after ray.init):
    the log stream's handler, and the function the raylet's error messages are printed with."""
    from ray._private import worker as ray_worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printer = dict(dispatcher.handlers).get("ray_print_logs")
    if printer is None or getattr(printer, "crash_filter", None):
        return
    crash = CrashFilter(
        ray_worker._global_node.get_logs_dir_path() if ray_worker._global_node else "<the Ray session's logs>"
    )

    def filtered(data):
        kept = crash.filter(data)
        if kept is not None:
            printer(kept)

    filtered.crash_filter = crash  # type: ignore[attr-defined]  # a marker on the function, read by getattr above
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", filtered)
    original = ray_worker.print_to_stdstream

    def print_to_stdstream(data, ignore_prefix: bool):  # the raylet's errors (listen_error_messages)
        kept = crash.filter(data)
        if kept is not None:
            original(kept, ignore_prefix)

    ray_worker.print_to_stdstream = print_to_stdstream

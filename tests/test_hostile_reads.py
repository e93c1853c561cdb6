"""Every read the sharder makes is bounded in time and bytes, whatever the other side does: a
misbehaving HTTP server on loopback (tests/hostile_server.py) and local names that are not
regular files. Each case ends within its deadline plus a small margin, with its reason."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.reading.fetch import FetchError, fetch_bytes
from tests.hostile_server import HostileServer

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT, RETRIES, MARGIN = 1.0, 1, 1.5
BOUND = TIMEOUT * (RETRIES + 1) + MARGIN  # a record's total deadline plus the margin


@pytest.fixture(scope="module")
def hostile():
    srv = HostileServer()
    yield srv
    srv.close()


def _fails(src: str, max_bytes: int = 1 << 20) -> tuple[str, str, float]:
    t = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch_bytes(src, TIMEOUT, RETRIES, max_bytes)
    return info.value.reason, str(info.value), time.monotonic() - t


@pytest.mark.parametrize(
    "path, reason",
    [
        ("/drip", "timeout"),
        ("/drip-headers", "timeout"),
        ("/endless", "record_too_large"),
        ("/huge-length", "record_too_large"),
        ("/short", "incomplete_body"),
        ("/reset", "connection_reset"),
        ("/loop", "connection_error"),
        ("/chain/9", "connection_error"),
        ("/to-file", "unsupported_url"),
        ("/to-ftp", "unsupported_url"),
        ("/503-long", "http_503"),
    ],
)
def test_a_hostile_url_is_one_reject_within_its_deadline(hostile, path, reason):
    got, detail, seconds = _fails(hostile.url + path)
    assert got == reason, detail
    assert seconds < BOUND, f"{path}: {seconds:.1f} s"
    assert len(detail) < 400


def test_redirects_and_retry_after_are_followed_within_bounds(hostile):
    assert fetch_bytes(hostile.url + "/chain/3", TIMEOUT, RETRIES)[:2] == b"\xff\xd8"  # 3 hops: fine
    t = time.monotonic()
    assert fetch_bytes(hostile.url + "/429-once/a.jpg", 3.0, 2)[:2] == b"\xff\xd8"
    assert time.monotonic() - t >= 1.0  # the server's Retry-After: 1 was waited
    assert hostile.counts["/429-once/a.jpg"] == 2
    _, detail, seconds = _fails(hostile.url + "/503-long")
    assert "Retry-After 3600" in detail and seconds < 1.0  # a wait past the deadline is not begun
    assert fetch_bytes(hostile.url.replace("http://", "HTTP://") + "/ok/1.jpg")[:2] == b"\xff\xd8"


def test_local_names_that_are_not_regular_files(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\0" * (2 << 20))
    for src, reason in [
        (str(fifo), "not_a_file"),
        ("/dev/zero", "not_a_file"),
        (str(tmp_path), "not_a_file"),
        (f"file://{fifo}", "not_a_file"),
        (str(big), "record_too_large"),
        ("gs://bucket/x.jpg", "unsupported_url"),
        (str(tmp_path / "none.jpg"), "not_found"),
    ]:
        got, detail, seconds = _fails(src)
        assert (got, seconds < 1.0) == (reason, True), (src, detail)


_RSS_CHILD = """
import sys, time
from data.reading.fetch import FetchError, fetch_bytes
for src in sys.argv[1:]:
    for _ in range(3):
        try:
            fetch_bytes(src, 5.0, 0)
        except FetchError as e:
            print(e.reason, flush=True)
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print("peak_mib", int(line.split()[1]) // 1024)
"""


def test_the_memory_of_endless_inputs_is_bounded(hostile, tmp_path):
    """Endless bodies and /dev/zero with the default data.max_record_bytes (32 MiB): the process's
    peak RSS stays under 200 MiB (it read 2.2 GB and 4.5 GB before)."""
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(1 << 30)  # a sparse 1 GiB regular file
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _RSS_CHILD,
            hostile.url + "/endless",
            hostile.url + "/huge-length",
            "/dev/zero",
            str(big),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = out.stdout.split()
    assert lines[:-2] == ["record_too_large"] * 6 + ["not_a_file"] * 3 + ["record_too_large"] * 3, out.stderr
    assert int(lines[-1]) < 200, f"peak RSS {lines[-1]} MiB"

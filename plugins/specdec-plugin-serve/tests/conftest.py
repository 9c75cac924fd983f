"""Tiny models run fastest single-threaded (as in specdec's own test suite); `server_url` waits
for a `specdec serve` subprocess, one process or a torchrun of ranks alike."""

import re
import subprocess
import time

import httpx
import pytest
import torch

torch.set_num_threads(1)


def _server_url(process: subprocess.Popen, timeout: float) -> str:
    """The URL the server logs once it listens, returned when its /health answers; kills the
    server and fails with its last log lines when that does not happen within `timeout` seconds."""
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        lines.append(line)
        found = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", line)
        if found:
            url = found.group(1)
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        return url
                except httpx.TransportError:
                    time.sleep(0.2)
            break
        assert line or process.poll() is None, "".join(lines)
    process.kill()
    raise AssertionError("the server did not start: " + "".join(lines[-30:]))


@pytest.fixture
def server_url():
    """`server_url(process, timeout)`: see `_server_url`."""
    return _server_url

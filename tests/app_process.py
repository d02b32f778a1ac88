"""`python app.py` in its own process on a free port, until it serves its page: the one way the tests and the
benchmarks start the app as a visitor meets it (`tests/test_app_browser.py`, `bench/bench_marking.py`,
`bench/load.py`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

__all__ = ["REPO", "RunningApp", "free_port"]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RunningApp:
    """`python app.py [flags] --host 127.0.0.1 --port <free>` with its output in `log_path`; `url` once it
    answers. `launch` replaces `app.py` by other interpreter arguments (e.g. `-c` code that sets torch up
    first and runs app.py). Use as a context manager, or call `stop()`."""

    def __init__(
        self,
        flags: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        launch: Sequence[str] = ("app.py",),
        timeout_s: float = 180,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_path
        command = [sys.executable, *launch, *flags, "--host", "127.0.0.1", "--port", str(self.port)]
        environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        with log_path.open("w") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self.started_s = self._wait(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout_s: float) -> float:
        began = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return time.monotonic() - began
            except OSError:
                pass
            if time.monotonic() - began > timeout_s:
                raise RuntimeError(f"app.py did not serve within {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """Ask the server to end; kill it when it has not ended within 30 s."""
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> RunningApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

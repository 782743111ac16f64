"""`flowerft serve` in a child process on a free loopback port, for the serve tests and the load benchmark.

The server binds port 0 itself and prints the URL it got: no port is picked and then lost to
another process. Its log (one line per request) is collected from stderr as it comes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time


class ServerProcess:
    def __init__(self, *args: str, timeout: float = 180):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "flowerft", "serve", "--port", "0", *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.stdout: list[str] = []
        self.log: list[str] = []
        self.url = None
        threading.Thread(target=self._collect, args=(self.process.stderr, self.log), daemon=True).start()
        deadline = time.monotonic() + timeout
        for line in self.process.stdout:
            self.stdout.append(line)
            if found := re.search(r"on (http://\S+)$", line.strip()):
                self.url = found.group(1)
                break
            if time.monotonic() > deadline:
                break
        if self.url is None:
            self.process.kill()
            raise RuntimeError(f"flowerft serve did not start: {''.join(self.stdout)}{''.join(self.log)[-3000:]}")
        threading.Thread(target=self._collect, args=(self.process.stdout, self.stdout), daemon=True).start()

    @staticmethod
    def _collect(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def requests_logged(self) -> list[str]:
        return [line for line in self.log if re.search(r" (GET|POST|PUT|DELETE) /", line)]

    def interrupt(self, timeout: float = 30) -> int:
        """Ctrl-C, as a terminal sends it; the exit code."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

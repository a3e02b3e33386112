"""Consumer processes under test: start, watch, measure, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson

from costflux.embedded import die_with_parent_hook

try:
    import psutil  # type: ignore[import-untyped, unused-ignore]
except ImportError:  # optional: /proc covers Linux without it
    psutil = None



def peak_rss_mb(pid: int) -> float | None:
    """The process's resident-set high-water mark (VmHWM), in MB (10^6 bytes)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process (all its threads) so far."""
    if pid is None:
        return None
    if psutil is not None:
        try:
            times = psutil.Process(pid).cpu_times()
            return float(times.user + times.system)
        except psutil.Error:
            return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of one name summed), from /proc/<pid>/task."""
    out: dict[str, float] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm", encoding="utf-8") as comm:
                name = comm.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        out[name] = out.get(name, 0.0) + seconds
    return out


class ConsumerProcess:
    """One process under test, its output going to a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path,
                 cwd: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.spawned_at = time.time()
        self.process = subprocess.Popen(  # noqa: S603 - argv is built by the orchestrator
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            preexec_fn=die_with_parent_hook(),
        )
        self._rss_samples: list[float] = []
        self._sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample_rss, daemon=True)
        self._sampler.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def _sample_rss(self) -> None:
        # VmHWM is the real peak; sampling is the fallback where /proc is missing.
        if psutil is None:
            return
        try:
            proc = psutil.Process(self.pid)
            while not self._sampling.wait(0.1):
                self._rss_samples.append(proc.memory_info().rss / 1e6)
        except psutil.Error:
            return

    def peak_rss_mb(self) -> float | None:
        """Peak RSS: VmHWM while the process lives, else the highest sample."""
        peak = peak_rss_mb(self.pid)
        if peak is None and self._rss_samples:
            peak = max(self._rss_samples)
        return peak

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.pid)

    def wait_report(self, path: Path, timeout: float) -> dict[str, Any]:
        """Wait for the child's done report; raise if it dies or takes too long."""
        deadline = time.monotonic() + timeout
        while True:
            if path.exists():
                report: dict[str, Any] = orjson.loads(path.read_bytes())
                return report
            if not self.alive:
                raise RuntimeError(
                    f"{self.name} exited with code {self.process.returncode} before it "
                    f"reported; log tail:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not report within {timeout:.0f} s; "
                                   f"log tail:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    def stop(self, timeout: float = 20.0) -> dict[str, Any]:
        """SIGTERM, then SIGKILL after timeout; say how it ended."""
        self._sampling.set()
        started = time.monotonic()
        killed = False
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                killed = True
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(OSError):
            self._log.close()
        return {
            "exit_code": self.process.returncode,
            "stop_s": round(time.monotonic() - started, 2),
            "killed": killed,
        }

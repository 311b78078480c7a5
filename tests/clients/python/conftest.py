"""Fixtures for the redis-py suite: one redis-server and one respipe in front of it.

Environment:
  RESPIPE_BIN              proxy binary (default: <repo>/target/debug/respipe)
  RESPIPE_PYTEST_DIRECT=1  no proxy: every "proxy" client talks to redis-server itself.
                           Proves each test's expectation is what real Redis does.

The servers are started once per session on free ports (bind 127.0.0.1:0). Before each test
Redis is flushed through a direct connection; after each test the proxy must still be
running (a crash fails that test with the tail of the proxy's log, and the next test gets a
fresh proxy).
"""

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REPO = Path(__file__).resolve().parents[3]
HOST = "127.0.0.1"
DIRECT = os.environ.get("RESPIPE_PYTEST_DIRECT", "") not in ("", "0")
START_TIMEOUT = 10.0
SOCKET_TIMEOUT = 10.0


def proxy_bin():
    return os.environ.get("RESPIPE_BIN") or str(REPO / "target" / "debug" / "respipe")


def free_ports(n):
    """n distinct free ports: all sockets are held open until every port is chosen."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def log_tail(path, n=40):
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "<no log>"
    return "\n".join(lines[-n:])


def wait_for_pong(port, proc, name, log):
    """Wait until `port` answers a RESP PING with +PONG, or fail (process exit, timeout)."""
    deadline = time.monotonic() + START_TIMEOUT
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited with status {proc.returncode} before answering PING\n"
                f"{log_tail(log)}"
            )
        try:
            with socket.create_connection((HOST, port), timeout=1.0) as s:
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                data = b""
                while not data.endswith(b"\r\n"):
                    chunk = s.recv(64)
                    if not chunk:
                        break
                    data += chunk
                if data == b"+PONG\r\n":
                    return
                last = f"answered {data!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.05)
    raise RuntimeError(
        f"{name} on {HOST}:{port} did not answer PING within {START_TIMEOUT}s "
        f"(last: {last})\n{log_tail(log)}"
    )


def _die_with_parent():
    """Runs in the child before exec: SIGTERM it if pytest dies without tearing down."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def stop(proc):
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class Stack:
    """redis-server plus respipe (or, in direct mode, redis-server alone)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="respipe-pytest-")
        self.redis_proc = None
        self.proxy_proc = None
        self.proxy_starts = 0
        self.redis_port, self.proxy_port = free_ports(2)
        self.redis_log = os.path.join(self.dir, "redis.log")
        self.proxy_log = os.path.join(self.dir, "respipe.log")

    @staticmethod
    def _spawn(argv, log_path):
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    def start(self):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.redis_proc = self._spawn(
            [
                "redis-server",
                "--port", str(self.redis_port),
                "--bind", HOST,
                "--save", "",
                "--appendonly", "no",
                "--dir", self.dir,
            ],
            self.redis_log,
        )
        wait_for_pong(self.redis_port, self.redis_proc, "redis-server", self.redis_log)
        if DIRECT:
            self.proxy_port = self.redis_port
        else:
            self.start_proxy()

    def start_proxy(self):
        binary = proxy_bin()
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"respipe binary {binary} not found (cargo build, or set RESPIPE_BIN)")
        self.proxy_starts += 1
        with open(self.proxy_log, "ab") as f:
            f.write(f"=== start #{self.proxy_starts}\n".encode())
        self.proxy_proc = self._spawn(
            [
                binary,
                "--listen", f"{HOST}:{self.proxy_port}",
                "--upstream", f"redis://{HOST}:{self.redis_port}",
            ],
            self.proxy_log,
        )
        wait_for_pong(self.proxy_port, self.proxy_proc, "respipe", self.proxy_log)

    def dead(self):
        """A description of whichever process has died, or None."""
        if self.redis_proc.poll() is not None:
            return f"redis-server exited with status {self.redis_proc.returncode}\n{log_tail(self.redis_log)}"
        if not DIRECT and self.proxy_proc.poll() is not None:
            return f"respipe exited with status {self.proxy_proc.returncode}\n{log_tail(self.proxy_log)}"
        return None

    def revive(self):
        if self.redis_proc.poll() is not None:
            raise RuntimeError(f"redis-server died:\n{log_tail(self.redis_log)}")
        if not DIRECT and self.proxy_proc.poll() is not None:
            self.start_proxy()

    def close(self):
        stop(self.proxy_proc)
        stop(self.redis_proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def pytest_report_header(config):
    if DIRECT:
        return "respipe redis-py suite: DIRECT mode, clients talk to redis-server itself"
    return f"respipe redis-py suite: through {proxy_bin()}; redis-py {redis.__version__}"


@pytest.fixture(scope="session")
def stack():
    s = Stack()
    try:
        s.start()
        yield s
    finally:
        s.close()


NO_RETRY = Retry(NoBackoff(), 0)


@pytest.fixture
def make_client(stack):
    """Factory for clients of the proxy. Only the timeouts are set, and retries are off (a
    silent reconnect-and-retry would hide a dropped connection and turn one hang into ten);
    every other setting is redis-py's default unless the test passes it. All are closed at
    the end of the test."""
    made = []

    def make(**kw):
        kw.setdefault("host", HOST)
        kw.setdefault("port", stack.proxy_port)
        kw.setdefault("socket_timeout", SOCKET_TIMEOUT)
        kw.setdefault("socket_connect_timeout", SOCKET_TIMEOUT)
        kw.setdefault("retry", NO_RETRY)
        c = redis.Redis(**kw)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.close()
        except Exception:
            pass


@pytest.fixture
def r(make_client):
    """Through the proxy, library defaults (protocol: redis-py's default, RESP3 in 8.x)."""
    return make_client()


@pytest.fixture
def r2(make_client):
    return make_client(protocol=2)


@pytest.fixture
def r3(make_client):
    return make_client(protocol=3)


@pytest.fixture(params=["default", "resp2"])
def variant(request):
    """Client settings of a feature test: redis-py's defaults, or protocol=2."""
    return {} if request.param == "default" else {"protocol": 2}


@pytest.fixture
def mk(make_client, variant):
    """make_client with the test's variant settings (explicit arguments win)."""
    return lambda **kw: make_client(**{**variant, **kw})


@pytest.fixture
def rc(mk):
    """Through the proxy, in the test's variant."""
    return mk()


@pytest.fixture
def r_db1(mk):
    """db=1 through the proxy, in the test's variant."""
    return mk(db=1)


def _direct(stack, db):
    return redis.Redis(
        host=HOST, port=stack.redis_port, db=db, protocol=2,
        socket_timeout=SOCKET_TIMEOUT, retry=NO_RETRY,
    )


@pytest.fixture
def direct(stack):
    """Straight to redis-server (db 0), for checking what the proxy did."""
    c = _direct(stack, 0)
    yield c
    c.close()


@pytest.fixture
def direct_db1(stack):
    c = _direct(stack, 1)
    yield c
    c.close()


@pytest.fixture(autouse=True)
def _fresh(stack):
    """Before: a live proxy and an empty Redis. After: the proxy must still be alive."""
    stack.revive()
    c = _direct(stack, 0)
    try:
        c.flushall()
        c.script_flush()
    finally:
        c.close()
    yield
    died = stack.dead()
    if died:
        pytest.fail(f"process died during the test: {died}", pytrace=False)

"""redis-py, unmodified, through respipe: everything here must behave exactly as against Redis.

Run with RESPIPE_PYTEST_DIRECT=1 to check the expectations against redis-server itself.
Fixtures (conftest.py): r (library defaults: RESP3 in redis-py 8), r2 (protocol=2),
r3 (protocol=3), direct / direct_db1 (straight to Redis), make_client. Tests of a feature
(pipelines, transactions, WATCH, pub/sub, blocking, Lua, db=1, CLIENT, pools) take rc / mk /
r_db1, which run twice: [default] with redis-py's defaults and [resp2] with protocol=2, so a
feature is proven on its own even while the RESP3 handshake is not.
Every loop is bounded in count, every wait in time.
"""

import socket
import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import ExecAbortError, NoScriptError, ResponseError, WatchError
from redis.retry import Retry

HOST = "127.0.0.1"
TIMEOUT = 10.0


# ---------------------------------------------------------------- helpers


def raw(client, *args):
    """Send one command on a single_connection_client's connection and read the reply with
    no response callback (so QUEUED, nil EXEC, maps and sets are seen as sent)."""
    conn = client.connection
    conn.send_command(*args)
    return conn.read_response()


def run_threads(targets, timeout):
    """Run callables in threads; re-raise the first exception; fail if any outlives timeout."""
    errors = []
    results = [None] * len(targets)

    def wrap(i, fn):
        try:
            results[i] = fn()
        except BaseException as e:  # noqa: BLE001 - reported to the test below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i, fn), daemon=True) for i, fn in enumerate(targets)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = sum(t.is_alive() for t in threads)
    if errors:
        raise errors[0]
    assert alive == 0, f"{alive} of {len(threads)} threads still running after {timeout}s"
    return results


def next_message(p, timeout=TIMEOUT):
    """The next pub/sub message of any type (subscribe confirmations included)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = p.get_message(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
        if m is not None:
            return m
    raise AssertionError(f"no pub/sub message within {timeout}s")


def handshake_proto(client):
    conn = client.connection_pool.get_connection()
    try:
        meta = conn.handshake_metadata
    finally:
        client.connection_pool.release(conn)
    return meta


class Raw:
    """A bare socket speaking RESP, for checking reply types on the wire."""

    def __init__(self, port):
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        self.buf = b""

    def close(self):
        self.sock.close()

    def send(self, *commands):
        out = []
        for cmd in commands:
            out.append(b"*%d\r\n" % len(cmd))
            for a in cmd:
                a = a if isinstance(a, bytes) else str(a).encode()
                out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed; unparsed: {self.buf!r}")
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def read(self):
        """(type byte as str, value): aggregates hold (type, value) items; maps hold pairs."""
        line = self._line()
        t, rest = line[:1].decode(), line[1:]
        if t in "+-:,(#":
            return t, rest
        if t in "$=!":
            n = int(rest)
            return t, (None if n < 0 else self._exact(n))
        if t == "_":
            return t, None
        if t in "*~>":
            n = int(rest)
            return t, (None if n < 0 else [self.read() for _ in range(n)])
        if t == "%":
            return t, [(self.read(), self.read()) for _ in range(int(rest))]
        if t == "|":  # attribute: skip it, return what it annotates
            for _ in range(int(rest)):
                self.read()
                self.read()
            return self.read()
        raise AssertionError(f"not RESP: {line!r}")


def raw_map(value):
    return {k[1]: v for k, v in value}


# ---------------------------------------------------------------- connect and basic commands


def test_default_client_handshake_and_basic_commands(r, direct):
    # redis-py 8 default: HELLO 3, CLIENT MAINT_NOTIFICATIONS, CLIENT SETINFO x2 on connect.
    assert r.ping() is True
    meta = handshake_proto(r)
    assert meta is not None, "default client did not run HELLO"
    assert meta.get(b"proto", meta.get("proto")) == 3
    assert r.set("k", "v") is True
    assert r.get("k") == b"v"
    assert r.incr("n") == 1
    assert r.incr("n", 41) == 42
    assert r.get("missing") is None
    assert r.delete("k", "missing") == 1
    assert direct.get("n") == b"42"


def test_library_defaults_untouched(stack):
    """redis.Redis(host, port) with nothing else: default timeouts and retries too."""
    c = redis.Redis(host=HOST, port=stack.proxy_port)
    try:
        assert c.ping() is True
        assert c.set("d", "1") is True
        assert c.incr("d") == 2
        assert c.get("d") == b"2"
    finally:
        c.close()


def test_resp2_client_basic_commands(r2, direct):
    assert r2.ping() is True
    assert handshake_proto(r2) is None  # no HELLO sent under protocol=2
    assert r2.set("k", "v") is True
    assert r2.get("k") == b"v"
    assert r2.incr("n") == 1
    assert r2.hset("h", mapping={"a": "1", "b": "2"}) == 2
    assert r2.hgetall("h") == {b"a": b"1", b"b": b"2"}
    assert direct.get("k") == b"v"


def test_handshake_commands_of_redis_py_8_answered_on_the_wire(stack):
    """The exact connect sequence redis-py 8.1.0 sends (shared/notes/client-handshakes.md),
    pipelined: every command gets a reply (errors allowed where Redis 7.0 has no such
    subcommand), and the connection stays usable."""
    c = Raw(stack.proxy_port)
    try:
        c.send(
            ["HELLO", "3"],
            ["CLIENT", "MAINT_NOTIFICATIONS", "ON", "moving-endpoint-type", "internal-ip"],
            ["CLIENT", "SETINFO", "LIB-NAME", "redis-py"],
            ["CLIENT", "SETINFO", "LIB-VER", "8.1.0"],
            ["PING"],
        )
        t, hello = c.read()
        assert t == "%"
        assert raw_map(hello)[b"proto"] == (":", b"3")
        for _ in range(3):
            t, _v = c.read()
            assert t in "+-", f"CLIENT ... answered with type {t}"
        assert c.read() == ("+", b"PONG")
    finally:
        c.close()


# ---------------------------------------------------------------- pipelines


def test_pipeline_1000_mixed_commands(rc, direct):
    c = rc
    pipe = c.pipeline(transaction=False)
    expected = []
    ctr = 0
    lst = 0
    members = set()
    big = b"x" * 100_000
    for i in range(1000):
        k = i % 10
        if k == 0:
            pipe.set(f"s:{i}", f"v{i}")
            expected.append(True)
        elif k == 1:
            pipe.get(f"s:{i - 1}")
            expected.append(f"v{i - 1}".encode())
        elif k == 2:
            pipe.incr("ctr")
            ctr += 1
            expected.append(ctr)
        elif k == 3:
            pipe.rpush("list", i)
            lst += 1
            expected.append(lst)
        elif k == 4:
            pipe.hset("hash", f"f{i}", i)
            expected.append(1)
        elif k == 5:
            pipe.sadd("set", i % 7)
            expected.append(0 if i % 7 in members else 1)
            members.add(i % 7)
        elif k == 6:
            pipe.get("nope")
            expected.append(None)
        elif k == 7:
            pipe.incr(f"s:{i - 7}")  # a string value: a per-command error
            expected.append(ResponseError)
        elif k == 8:
            if i % 100 == 8:
                pipe.set(f"big:{i}", big)
                expected.append(True)
            else:
                pipe.echo(f"e{i}")
                expected.append(f"e{i}".encode())
        else:
            pipe.exists(f"s:{i - 9}", "nope")
            expected.append(1)
    results = pipe.execute(raise_on_error=False)
    assert len(results) == 1000
    for i, (got, want) in enumerate(zip(results, expected)):
        if want is ResponseError:
            assert isinstance(got, ResponseError) and "not an integer" in str(got), (i, got)
        else:
            assert got == want, (i, got, want)
    assert direct.get("ctr") == str(ctr).encode()
    assert direct.llen("list") == lst
    assert direct.hlen("hash") == 100
    assert direct.scard("set") == 7
    assert direct.get("big:508") == big


# ---------------------------------------------------------------- transactions


def test_multi_exec_pipeline(rc, direct):
    with rc.pipeline(transaction=True) as p:
        p.set("a", "1")
        p.incr("a")
        p.get("a")
        p.lpush("l", "x", "y")
        p.lrange("l", 0, -1)
        assert p.execute() == [True, 2, b"2", 2, [b"y", b"x"]]
    assert direct.get("a") == b"2"
    assert rc.get("a") == b"2"  # the client's connection works normally afterwards


def test_multi_exec_queued_command_error(rc, direct):
    rc.set("str", "abc")
    with rc.pipeline(transaction=True) as p:
        p.set("before", 1)
        p.incr("str")  # queued fine, fails at EXEC
        p.set("after", 2)
        p.get("str")
        res = p.execute(raise_on_error=False)
    assert res[0] is True
    assert isinstance(res[1], ResponseError) and "not an integer" in str(res[1])
    assert res[2:] == [True, b"abc"]
    assert direct.mget("before", "after") == [b"1", b"2"]

    with rc.pipeline(transaction=True) as p:
        p.incr("str")
        p.set("after2", 3)
        with pytest.raises(ResponseError, match="not an integer"):
            p.execute()
    assert direct.get("after2") == b"3"  # the rest of the transaction still ran


def test_multi_execabort_on_arity_error(rc, direct):
    with rc.pipeline(transaction=True) as p:
        p.set("x", 1)
        p.execute_command("SET", "onlykey")  # rejected at queue time -> EXECABORT
        p.set("y", 2)
        with pytest.raises(ResponseError, match="wrong number of arguments"):
            p.execute()
    assert direct.exists("x", "y", "onlykey") == 0
    assert rc.set("z", 1) is True


def test_multi_raw_execabort_discard_and_errors(mk, direct):
    c = mk(single_connection_client=True)
    assert raw(c, "MULTI") == b"OK"
    assert raw(c, "SET", "x", "1") == b"QUEUED"
    with pytest.raises(ResponseError, match="wrong number of arguments"):
        raw(c, "SET", "onlykey")
    with pytest.raises(ResponseError, match="unknown command"):
        raw(c, "NOSUCHCOMMAND", "a")
    with pytest.raises(ExecAbortError):
        raw(c, "EXEC")
    assert direct.exists("x") == 0
    assert raw(c, "GET", "x") is None  # out of MULTI again: runs at once

    assert raw(c, "MULTI") == b"OK"
    with pytest.raises(ResponseError, match="MULTI calls can not be nested"):
        raw(c, "MULTI")
    assert raw(c, "SET", "x", "1") == b"QUEUED"
    assert raw(c, "INCR", "x") == b"QUEUED"
    assert raw(c, "DISCARD") == b"OK"
    assert direct.exists("x") == 0
    assert raw(c, "GET", "x") is None
    with pytest.raises(ResponseError, match="DISCARD without MULTI"):
        raw(c, "DISCARD")
    with pytest.raises(ResponseError, match="EXEC without MULTI"):
        raw(c, "EXEC")
    assert raw(c, "SET", "x", "2") == b"OK"


def test_multi_isolated_from_other_clients(mk, direct):
    """Queued commands run at EXEC only; other clients meanwhile run at once."""
    c = mk(single_connection_client=True)
    other = mk()
    assert raw(c, "MULTI") == b"OK"
    assert raw(c, "SET", "t", "mine") == b"QUEUED"
    assert raw(c, "GET", "o") == b"QUEUED"
    assert other.get("t") is None
    assert other.set("o", "theirs") is True
    assert direct.get("o") == b"theirs"
    assert raw(c, "EXEC") == [b"OK", b"theirs"]
    assert other.get("t") == b"mine"


# ---------------------------------------------------------------- WATCH


def test_transaction_helper(rc, direct):
    rc.set("bal", 10)

    def move(pipe):
        bal = int(pipe.get("bal"))
        pipe.multi()
        pipe.set("bal", bal - 3)
        pipe.rpush("log", bal)

    assert rc.transaction(move, "bal") == [True, 1]
    assert direct.get("bal") == b"7"


def test_transaction_helper_retries_after_conflict(rc, mk, direct):
    other = mk()
    rc.set("k", 1)
    calls = []

    def f(pipe):
        calls.append(1)
        assert len(calls) <= 3
        v = int(pipe.get("k"))
        if len(calls) == 1:
            other.set("k", 100)  # another client touches the watched key
        pipe.multi()
        pipe.set("k", v + 1)

    assert rc.transaction(f, "k") == [True]
    assert len(calls) == 2
    assert direct.get("k") == b"101"


def test_watch_conflict_makes_exec_return_nil(mk, direct):
    c = mk(single_connection_client=True)
    other = mk()
    c.set("w", 1)
    assert raw(c, "WATCH", "w") == b"OK"
    assert other.set("w", 2) is True
    assert raw(c, "MULTI") == b"OK"
    assert raw(c, "SET", "w", "3") == b"QUEUED"
    assert raw(c, "EXEC") is None
    assert direct.get("w") == b"2"

    # no conflict: EXEC runs; UNWATCH forgets the watch
    assert raw(c, "WATCH", "w") == b"OK"
    assert raw(c, "MULTI") == b"OK"
    assert raw(c, "INCR", "w") == b"QUEUED"
    assert raw(c, "EXEC") == [3]
    assert raw(c, "WATCH", "w") == b"OK"
    assert raw(c, "UNWATCH") == b"OK"
    other.set("w", 10)
    assert raw(c, "MULTI") == b"OK"
    assert raw(c, "INCR", "w") == b"QUEUED"
    assert raw(c, "EXEC") == [11]


def test_manual_watch_retry_loop(rc, mk, direct):
    other = mk()
    rc.set("cnt", 0)
    attempts = 0
    with rc.pipeline() as pipe:
        while True:
            attempts += 1
            assert attempts <= 5
            try:
                pipe.watch("cnt")
                cur = int(pipe.get("cnt"))
                if attempts == 1:
                    other.incr("cnt")  # conflict on the first attempt only
                pipe.multi()
                pipe.set("cnt", cur + 10)
                pipe.execute()
                break
            except WatchError:
                continue
    assert attempts == 2
    assert direct.get("cnt") == b"11"


def _watch_incr_loop(client, key, successes, max_attempts):
    attempts = 0
    done = 0
    with client.pipeline() as pipe:
        while done < successes:
            attempts += 1
            assert attempts <= max_attempts, f"{attempts} attempts for {done} successes"
            try:
                pipe.watch(key)
                cur = int(pipe.get(key) or 0)
                pipe.multi()
                pipe.incr(key)
                (new,) = pipe.execute()
                # WATCH held: nobody wrote between our GET and our INCR
                assert new == cur + 1, (cur, new)
                done += 1
            except WatchError:
                continue
    return attempts


@pytest.mark.timeout(60)
def test_watch_concurrency_10_threads_x_200(mk, direct):
    clients = [mk() for _ in range(10)]
    attempts = run_threads(
        [lambda c=c: _watch_incr_loop(c, "hot", 200, 20_000) for c in clients], timeout=50
    )
    assert direct.get("hot") == b"2000"
    assert sum(attempts) >= 2000


# ---------------------------------------------------------------- pub/sub


@pytest.mark.timeout(60)
def test_pubsub_10000_messages_in_order(mk):
    sub = mk()
    pub = mk()
    p = sub.pubsub()
    p.subscribe("ch")
    m = next_message(p)
    assert (m["type"], m["channel"], m["data"]) == ("subscribe", b"ch", 1)

    n, chunk = 10_000, 500

    def publish():
        for start in range(0, n, chunk):
            with pub.pipeline(transaction=False) as pp:
                for i in range(start, start + chunk):
                    pp.publish("ch", str(i))
                assert pp.execute() == [1] * chunk  # one subscriber received each

    errs = []

    def run_publish():
        try:
            publish()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errs.append(e)

    t = threading.Thread(target=run_publish, daemon=True)
    t.start()
    got = []
    deadline = time.monotonic() + 40
    while len(got) < n and time.monotonic() < deadline:
        m = p.get_message(timeout=1.0)
        if m is None:
            continue
        assert m["type"] == "message" and m["channel"] == b"ch", m
        got.append(int(m["data"]))
    t.join(10)
    if errs:
        raise errs[0]
    assert not t.is_alive()
    assert len(got) == n, f"received {len(got)} of {n}"
    assert got == list(range(n)), "messages out of order"
    assert p.get_message(timeout=0.2) is None  # nothing extra

    p.unsubscribe("ch")
    m = next_message(p)
    assert (m["type"], m["channel"], m["data"]) == ("unsubscribe", b"ch", 0)
    assert pub.publish("ch", "late") == 0

    # the same connection is a normal connection again
    conn = p.connection
    conn.send_command("SET", "after", "1")
    assert conn.read_response() == b"OK"
    conn.send_command("GET", "after")
    assert conn.read_response() == b"1"
    p.close()


def test_psubscribe_and_subscribe(rc, mk):
    pub = mk()
    p = rc.pubsub()
    p.psubscribe("news.*")
    m = next_message(p)
    assert (m["type"], m["channel"], m["data"]) == ("psubscribe", b"news.*", 1)
    p.subscribe("plain")
    m = next_message(p)
    assert (m["type"], m["channel"], m["data"]) == ("subscribe", b"plain", 2)

    assert pub.publish("news.a", "1") == 1
    assert pub.publish("other", "x") == 0
    assert pub.publish("plain", "2") == 1
    assert pub.publish("news.b", "3") == 1
    seen = [next_message(p) for _ in range(3)]
    assert [(m["type"], m["pattern"], m["channel"], m["data"]) for m in seen] == [
        ("pmessage", b"news.*", b"news.a", b"1"),
        ("message", None, b"plain", b"2"),
        ("pmessage", b"news.*", b"news.b", b"3"),
    ]
    assert p.get_message(timeout=0.2) is None

    p.punsubscribe("news.*")
    m = next_message(p)
    assert (m["type"], m["channel"], m["data"]) == ("punsubscribe", b"news.*", 1)
    p.unsubscribe()
    m = next_message(p)
    assert (m["type"], m["channel"], m["data"]) == ("unsubscribe", b"plain", 0)
    assert pub.publish("news.a", "gone") == 0
    assert pub.publish("plain", "gone") == 0
    p.close()
    assert rc.set("k", "v") is True


def test_ping_in_subscribed_mode(mk):
    sub = mk()
    pub = mk()
    p = sub.pubsub()
    p.subscribe("c")
    assert next_message(p)["type"] == "subscribe"
    # PUBLISH has returned, so Redis queued the message before it reads the PING:
    # the PONG must come after it on the subscriber's connection.
    assert pub.publish("c", "before") == 1
    p.ping()
    p.ping("hello")
    assert pub.publish("c", "after") == 1  # may race the pings: only its arrival is checked
    got = [next_message(p) for _ in range(4)]
    kinds = [(m["type"], m["data"]) for m in got]
    assert kinds[0] == ("message", b"before")
    assert [k for k in kinds if k[0] == "pong"] == [("pong", b""), ("pong", b"hello")]
    assert ("message", b"after") in kinds
    assert p.get_message(timeout=0.2) is None
    p.close()


@pytest.mark.parametrize("proto", [2, 3])
def test_commands_in_subscribed_mode(make_client, proto):
    """RESP2 allows only (P|S)(UN)SUBSCRIBE/PING/QUIT/RESET while subscribed; RESP3 allows all."""
    sub = make_client(protocol=proto)
    p = sub.pubsub()
    p.subscribe("c")
    assert next_message(p)["type"] == "subscribe"
    conn = p.connection
    conn.send_command("SET", "k", "v")
    if proto == 2:
        with pytest.raises(ResponseError, match="only .*allowed in this context"):
            conn.read_response()
    else:
        assert conn.read_response() == b"OK"
    p.unsubscribe("c")
    assert next_message(p)["type"] == "unsubscribe"
    p.close()


# ---------------------------------------------------------------- blocking commands


def test_blpop_timeout_returns_none(rc):
    t0 = time.monotonic()
    assert rc.blpop("q", timeout=0.3) is None
    elapsed = time.monotonic() - t0
    assert 0.25 <= elapsed < 5, elapsed
    assert rc.ping() is True


def test_blpop_unblocked_by_other_client(rc, mk, direct):
    other = mk()
    box = {}

    def wait():
        box["v"] = rc.blpop(["q1", "q2"], timeout=8)

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    time.sleep(0.3)
    assert t.is_alive(), f"BLPOP returned early: {box}"
    assert other.rpush("q2", "x") == 1
    t.join(8)
    assert not t.is_alive()
    assert tuple(box["v"]) == (b"q2", b"x")
    assert direct.exists("q2") == 0  # consumed exactly once


@pytest.mark.timeout(40)
def test_blocked_blpop_does_not_stall_other_clients(rc, mk, direct):
    waiters = [mk() for _ in range(4)]
    results = [None] * len(waiters)

    def wait(i, c):
        results[i] = c.blpop("q", timeout=0)

    threads = [threading.Thread(target=wait, args=(i, c), daemon=True) for i, c in enumerate(waiters)]
    for t in threads:
        t.start()
    time.sleep(0.3)

    worst = 0.0
    t0 = time.monotonic()
    for i in range(1000):
        s = time.monotonic()
        if i % 2:
            assert rc.incr("fast") == (i + 1) // 2
        else:
            assert rc.set(f"f:{i}", i) is True
        worst = max(worst, time.monotonic() - s)
    total = time.monotonic() - t0
    # A command stuck behind a blocked BLPOP would wait for ever (socket timeout): these
    # bounds only separate "fast" from "stalled", with room for a loaded 2-core machine.
    assert total < 8, f"1000 commands took {total:.2f}s while BLPOPs were blocked"
    assert worst < 1.0, f"slowest command took {worst:.3f}s while BLPOPs were blocked"
    assert all(t.is_alive() for t in threads), "a BLPOP q 0 returned with nothing pushed"

    assert direct.rpush("q", "a", "b", "c", "d") == 4
    for t in threads:
        t.join(8)
    assert not any(t.is_alive() for t in threads)
    assert sorted(v[1] for v in results) == [b"a", b"b", b"c", b"d"]
    assert all(v[0] == b"q" for v in results)
    assert direct.llen("q") == 0


# ---------------------------------------------------------------- Lua


def test_eval_evalsha_and_register_script(rc, direct):
    src = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
    assert rc.eval(src, 1, "n", 5) == 5
    sha = rc.script_load(src)
    assert rc.evalsha(sha, 1, "n", 2) == 7
    assert rc.script_exists(sha) == [True]

    script = rc.register_script("return {KEYS[1], ARGV[1], redis.call('GET', KEYS[1])}")
    rc.set("k", "v")
    assert script(keys=["k"], args=["a"]) == [b"k", b"a", b"v"]
    direct.script_flush()  # NOSCRIPT on EVALSHA: redis-py loads the script and retries
    assert script(keys=["k"], args=["b"]) == [b"k", b"b", b"v"]

    with rc.pipeline() as p:  # scripts in a transaction pipeline
        script(keys=["k"], args=["c"], client=p)
        p.get("k")
        assert p.execute() == [[b"k", b"c", b"v"], b"v"]

    with pytest.raises(NoScriptError):
        rc.evalsha("0" * 40, 0)
    with pytest.raises(ResponseError, match="boom"):
        rc.eval("return redis.error_reply('boom')", 0)
    assert direct.get("n") == b"7"


# ---------------------------------------------------------------- RESP3


def test_resp3_hello_maps_and_sets(r3, make_client):
    meta = handshake_proto(r3)
    assert meta.get(b"proto") == 3 and isinstance(meta.get(b"id"), int)
    hello = r3.execute_command("HELLO", 3)
    assert isinstance(hello, dict) and hello[b"proto"] == 3

    r3.hset("h", mapping={"a": "1", "b": "2"})
    assert r3.hgetall("h") == {b"a": b"1", b"b": b"2"}
    r3.sadd("s", "x", "y")
    assert r3.smembers("s") == {b"x", b"y"}
    r3.zadd("z", {"m": 1.5})

    conn = r3.connection_pool.get_connection()  # no response callbacks: the parser's types
    try:
        conn.send_command("HGETALL", "h")
        assert conn.read_response() == {b"a": b"1", b"b": b"2"}  # only a RESP3 map parses to dict
        conn.send_command("ZSCORE", "z", "m")
        assert conn.read_response() == 1.5  # RESP3 double
        conn.send_command("SMEMBERS", "s")
        assert sorted(conn.read_response()) == [b"x", b"y"]
    finally:
        r3.connection_pool.release(conn)

    # a RESP2 client at the same time still gets RESP2
    r2 = make_client(protocol=2, single_connection_client=True)
    assert raw(r2, "HGETALL", "h") == [b"a", b"1", b"b", b"2"]
    assert raw(r2, "ZSCORE", "z", "m") == b"1.5"


def test_resp3_wire_types_and_switch_back(stack):
    """Reply types byte by byte: map, set, double, null after HELLO 3; RESP2 after HELLO 2."""
    c = Raw(stack.proxy_port)
    try:
        c.send(["HSET", "h", "a", "1"], ["SADD", "s", "x"], ["ZADD", "z", "2.5", "m"])
        assert [c.read() for _ in range(3)] == [(":", b"1")] * 3
        c.send(["HELLO", "3"], ["HGETALL", "h"], ["SMEMBERS", "s"], ["ZSCORE", "z", "m"], ["GET", "nokey"])
        t, hello = c.read()
        assert t == "%" and raw_map(hello)[b"proto"] == (":", b"3")
        assert c.read() == ("%", [(("$", b"a"), ("$", b"1"))])
        assert c.read() == ("~", [("$", b"x")])
        assert c.read() == (",", b"2.5")
        assert c.read() == ("_", None)
        c.send(["HELLO", "2"], ["HGETALL", "h"], ["SMEMBERS", "s"], ["ZSCORE", "z", "m"], ["GET", "nokey"])
        t, hello = c.read()
        assert t == "*"
        assert c.read() == ("*", [("$", b"a"), ("$", b"1")])
        assert c.read() == ("*", [("$", b"x")])
        assert c.read() == ("$", b"2.5")
        assert c.read() == ("$", None)
        c.send(["HELLO", "4"])
        t, err = c.read()
        assert t == "-" and err.startswith(b"NOPROTO")
    finally:
        c.close()


@pytest.mark.timeout(40)
def test_resp2_and_resp3_clients_concurrently(make_client, direct):
    direct.hset("h", mapping={"a": "1"})
    direct.zadd("z", {"m": 0.5})

    def loop(proto):
        c = make_client(protocol=proto, single_connection_client=True)
        for i in range(300):
            h = raw(c, "HGETALL", "h")
            z = raw(c, "ZSCORE", "z", "m")
            if proto == 3:
                assert h == {b"a": b"1"} and z == 0.5, (i, h, z)
            else:
                assert h == [b"a", b"1"] and z == b"0.5", (i, h, z)
        return proto

    assert run_threads([lambda: loop(2), lambda: loop(3), lambda: loop(2), lambda: loop(3)], 30) == [2, 3, 2, 3]


# ---------------------------------------------------------------- databases


def test_db1_client(r_db1, direct, direct_db1):
    assert r_db1.set("k", "one") is True
    assert r_db1.incr("n") == 1
    with r_db1.pipeline(transaction=True) as p:
        p.set("tx", "1")
        p.incr("n")
        assert p.execute() == [True, 2]
    with r_db1.pipeline(transaction=False) as p:
        for i in range(100):
            p.set(f"p:{i}", i)
        assert p.execute() == [True] * 100
    assert direct_db1.get("k") == b"one"
    assert direct_db1.get("n") == b"2"
    assert direct_db1.get("tx") == b"1"
    assert direct_db1.dbsize() == 103
    assert direct.dbsize() == 0
    assert direct.get("k") is None


def test_db1_blocking_pop_waits_on_db1(r_db1, direct, direct_db1):
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("v", r_db1.blpop("q", timeout=5)), daemon=True)
    t.start()
    time.sleep(0.3)
    direct.rpush("q", "db0")  # another database: must not wake it
    time.sleep(0.2)
    assert t.is_alive()
    direct_db1.rpush("q", "db1")
    t.join(5)
    assert not t.is_alive()
    assert tuple(box["v"]) == (b"q", b"db1")
    assert direct.lrange("q", 0, -1) == [b"db0"]


# ---------------------------------------------------------------- CLIENT


def test_client_setname_getname_id(mk):
    c = mk(single_connection_client=True)
    assert c.client_getname() is None
    assert c.client_setname("worker-1") is True
    assert c.client_getname() == "worker-1"  # redis-py decodes this one
    i1 = c.client_id()
    assert isinstance(i1, int) and i1 > 0
    assert c.client_id() == i1

    d = mk(single_connection_client=True)
    assert d.client_getname() is None  # names are per connection
    i2 = d.client_id()
    assert isinstance(i2, int) and i2 != i1

    e = mk(client_name="named-at-connect", single_connection_client=True)
    assert e.client_getname() == "named-at-connect"
    assert e.set("k", "v") is True


# ---------------------------------------------------------------- connection pool


@pytest.mark.timeout(60)
def test_pool_of_10_with_64_threads(stack, mk, variant, direct):
    pool = redis.BlockingConnectionPool(
        **variant, host=HOST, port=stack.proxy_port, max_connections=10, timeout=20,
        socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, retry=Retry(NoBackoff(), 0),
    )
    c = mk(connection_pool=pool)
    threads, per = 64, 200

    def work():
        last = 0
        for _ in range(per):
            v = c.incr("pool")
            assert v > last  # one counter: each thread sees it increase
            last = v
        return last

    run_threads([work] * threads, timeout=50)
    assert direct.get("pool") == str(threads * per).encode()
    assert len(pool._connections) <= 10
    pool.disconnect()

// Package respipe_test runs the real go-redis v5 client (Debian's
// golang-gopkg-redis.v5-dev, import path gopkg.in/redis.v5) through respipe,
// unchanged, and checks that it observes exactly what it observes against
// Redis itself.
//
// TestMain starts its own redis-server on a free 127.0.0.1 port and respipe in
// front of it (binary from $RESPIPE_BIN, default ../../../target/debug/respipe).
// With RESPIPE_GO_DIRECT=1 the clients talk to redis-server directly, which is
// how every test is proven correct against real Redis.
//
// Run with tests/clients/go/run.sh (GOPATH mode; no Go module proxy needed).
package respipe_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	redis "gopkg.in/redis.v5"
)

var (
	// targetAddr is where the clients under test connect: respipe, or Redis
	// itself with RESPIPE_GO_DIRECT=1.
	targetAddr string
	// redisAddr is redis-server itself, used to check what really happened.
	redisAddr string
	// direct reports RESPIPE_GO_DIRECT=1.
	direct bool
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	direct = os.Getenv("RESPIPE_GO_DIRECT") == "1"

	logDir := os.Getenv("RESPIPE_GO_LOGDIR")
	if logDir == "" {
		d, err := os.MkdirTemp("", "respipe-go-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "mkdtemp:", err)
			return 2
		}
		logDir = d
	}
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "log dir:", err)
		return 2
	}

	if _, err := exec.LookPath("redis-server"); err != nil {
		fmt.Fprintln(os.Stderr, "redis-server is not installed (apt-get install redis-server)")
		return 2
	}

	redisPort := freePort()
	redisAddr = fmt.Sprintf("127.0.0.1:%d", redisPort)
	redisLog := filepath.Join(logDir, "redis-server.log")
	rs, err := startProcess(redisLog, "redis-server",
		"--port", strconv.Itoa(redisPort), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--protected-mode", "no")
	if err != nil {
		fmt.Fprintln(os.Stderr, "start redis-server:", err)
		return 2
	}
	defer stopProcess(rs)
	if err := waitPing(redisAddr, 10*time.Second); err != nil {
		fmt.Fprintf(os.Stderr, "redis-server on %s: %v (log: %s)\n", redisAddr, err, redisLog)
		return 2
	}

	proxyLog := filepath.Join(logDir, "respipe.log")
	if direct {
		targetAddr = redisAddr
		fmt.Printf("RESPIPE_GO_DIRECT=1: clients talk to redis-server %s directly\n", redisAddr)
	} else {
		bin := os.Getenv("RESPIPE_BIN")
		if bin == "" {
			bin = filepath.Join("..", "..", "..", "target", "debug", "respipe")
		}
		if abs, err := filepath.Abs(bin); err == nil {
			bin = abs
		}
		if _, err := os.Stat(bin); err != nil {
			fmt.Fprintf(os.Stderr, "respipe binary %s: %v (build it with cargo build, or set RESPIPE_BIN)\n", bin, err)
			return 2
		}
		proxyPort := freePort()
		targetAddr = fmt.Sprintf("127.0.0.1:%d", proxyPort)
		rp, err := startProcess(proxyLog, bin,
			"--listen", targetAddr, "--upstream", "redis://"+redisAddr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "start respipe:", err)
			return 2
		}
		defer stopProcess(rp)
		if err := waitPing(targetAddr, 10*time.Second); err != nil {
			fmt.Fprintf(os.Stderr, "respipe on %s: %v (log: %s)\n", targetAddr, err, proxyLog)
			printTail(proxyLog, 20)
			return 2
		}
		fmt.Printf("respipe %s on %s -> redis-server %s\n", bin, targetAddr, redisAddr)
	}

	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "logs: %s\n", logDir)
		if !direct {
			printTail(proxyLog, 30)
		}
	}
	return code
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startProcess starts a child whose output goes to logPath; it is killed if
// this test binary dies (e.g. on go test -timeout).
func startProcess(logPath, name string, args ...string) (*exec.Cmd, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	go func() { _ = cmd.Wait(); f.Close() }()
	return cmd, nil
}

func stopProcess(cmd *exec.Cmd) {
	if cmd.Process != nil {
		_ = cmd.Process.Kill()
	}
	// Give Wait (in startProcess's goroutine) a moment to reap it.
	time.Sleep(20 * time.Millisecond)
}

// waitPing waits until a plain RESP PING on addr answers +PONG.
func waitPing(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(time.Second))
			_, err = c.Write([]byte("*1\r\n$4\r\nPING\r\n"))
			if err == nil {
				var line string
				line, err = bufio.NewReader(c).ReadString('\n')
				if err == nil && line != "+PONG\r\n" {
					err = fmt.Errorf("PING answered %q", line)
				}
			}
			c.Close()
			if err == nil {
				return nil
			}
		}
		last = err
		time.Sleep(25 * time.Millisecond)
	}
	return fmt.Errorf("no PONG within %s: %v", timeout, last)
}

func printTail(path string, n int) {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	fmt.Fprintf(os.Stderr, "--- last lines of %s ---\n%s\n", path, strings.Join(lines, "\n"))
}

// ---------------------------------------------------------------------------
// helpers shared by the tests

// newClient is a go-redis client on the target (respipe, or Redis directly).
// opt may be nil (default options). It is closed when the test ends.
func newClient(t testing.TB, opt *redis.Options) *redis.Client {
	t.Helper()
	o := redis.Options{}
	if opt != nil {
		o = *opt
	}
	o.Addr = targetAddr
	c := redis.NewClient(&o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// redisClient talks to redis-server directly, bypassing respipe, to check
// what the proxy really did.
func redisClient(t testing.TB, db int) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: redisAddr, DB: db})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// key is a key private to the running test.
func key(t testing.TB, name string) string {
	return "go:" + t.Name() + ":" + name
}

// p99 of the given durations.
func p99(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	idx := (len(s)*99 + 99) / 100
	if idx > len(s) {
		idx = len(s)
	}
	return s[idx-1]
}

// within fails the test if f has not returned after d (f keeps running in
// its goroutine; the process ends with the run).
func within(t *testing.T, d time.Duration, what string, f func()) bool {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		t.Errorf("%s: still not done after %s", what, d)
		return false
	}
}

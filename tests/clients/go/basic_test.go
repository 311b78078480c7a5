package respipe_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	redis "gopkg.in/redis.v5"
)

// Default options: go-redis v5 sends nothing on connect; plain commands,
// nil replies, error replies, awkward values.
func TestBasicDefaultOptions(t *testing.T) {
	c := newClient(t, nil)
	k, n := key(t, "k"), key(t, "n")

	if err := c.Set(k, "v1", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if v, err := c.Get(k).Result(); err != nil || v != "v1" {
		t.Fatalf("GET = %q, %v; want v1", v, err)
	}
	for i := int64(1); i <= 100; i++ {
		if v, err := c.Incr(n).Result(); err != nil || v != i {
			t.Fatalf("INCR #%d = %d, %v", i, v, err)
		}
	}
	if v, err := c.Get(n).Result(); err != nil || v != "100" {
		t.Fatalf("GET counter = %q, %v; want 100", v, err)
	}

	// Missing key: a nil bulk, redis.Nil to the client.
	if _, err := c.Get(key(t, "missing")).Result(); err != redis.Nil {
		t.Fatalf("GET missing: err = %v, want redis.Nil", err)
	}
	// An error reply is per command, and the connection goes on.
	if _, err := c.Incr(k).Result(); err == nil || err.Error() != "ERR value is not an integer or out of range" {
		t.Fatalf("INCR on a string: err = %v", err)
	}
	unknown := redis.NewCmd("NOSUCHCOMMAND", "x")
	_ = c.Process(unknown)
	if err := unknown.Err(); err == nil || !strings.HasPrefix(err.Error(), "ERR unknown command") {
		t.Fatalf("unknown command: err = %v", err)
	}
	if v, err := c.Ping().Result(); err != nil || v != "PONG" {
		t.Fatalf("PING = %q, %v", v, err)
	}
	if v, err := c.Echo("hi\r\nthere").Result(); err != nil || v != "hi\r\nthere" {
		t.Fatalf("ECHO = %q, %v", v, err)
	}

	// Binary-safe values: CRLF, NUL, empty, 1 MiB.
	vals := map[string]string{
		key(t, "crlf"):  "a\r\nb\r\n*1\r\n$4\r\nPING\r\n",
		key(t, "nul"):   "x\x00y\xff",
		key(t, "empty"): "",
		key(t, "big"):   strings.Repeat("0123456789abcdef", 1<<16),
	}
	for kk, vv := range vals {
		if err := c.Set(kk, vv, 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", kk, err)
		}
	}
	for kk, vv := range vals {
		if v, err := c.Get(kk).Result(); err != nil || v != vv {
			t.Fatalf("GET %s: %d bytes, %v; want %d bytes", kk, len(v), err, len(vv))
		}
	}
	ks := []string{key(t, "crlf"), key(t, "missing"), key(t, "empty")}
	mv, err := c.MGet(ks...).Result()
	if err != nil || len(mv) != 3 || mv[0] != vals[ks[0]] || mv[1] != nil || mv[2] != "" {
		t.Fatalf("MGET = %#v, %v", mv, err)
	}
	if v, err := c.Del(k, n, key(t, "missing")).Result(); err != nil || v != 2 {
		t.Fatalf("DEL = %d, %v; want 2", v, err)
	}

	// Expiry set through the proxy is the one Redis holds.
	if err := c.Set(k, "x", 100*time.Second).Err(); err != nil {
		t.Fatalf("SET EX: %v", err)
	}
	if ttl, err := redisClient(t, 0).TTL(k).Result(); err != nil || ttl < 90*time.Second || ttl > 100*time.Second {
		t.Fatalf("TTL (direct) = %v, %v", ttl, err)
	}
}

// go-redis v5 with DB: 1 pipelines SELECT 1 on every new connection; the keys
// must land in database 1 only, for every pooled connection.
func TestSelectDB1(t *testing.T) {
	c1 := newClient(t, &redis.Options{DB: 1, PoolSize: 4})
	c0 := newClient(t, nil)

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ { // more goroutines than connections: all 4 get made
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				kk := key(t, fmt.Sprintf("g%d:%d", g, i))
				if err := c1.Set(kk, fmt.Sprintf("db1-%d-%d", g, i), 0).Err(); err != nil {
					errs <- fmt.Errorf("SET %s: %v", kk, err)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := c1.Incr(key(t, "n")).Err(); err != nil {
		t.Fatalf("INCR: %v", err)
	}

	d0, d1 := redisClient(t, 0), redisClient(t, 1)
	for g := 0; g < 8; g++ {
		for i := 0; i < 25; i++ {
			kk := key(t, fmt.Sprintf("g%d:%d", g, i))
			want := fmt.Sprintf("db1-%d-%d", g, i)
			if v, err := d1.Get(kk).Result(); err != nil || v != want {
				t.Fatalf("db 1 (direct) GET %s = %q, %v; want %q", kk, v, err, want)
			}
			if n, err := d0.Exists(kk).Result(); err != nil || n {
				t.Fatalf("db 0 (direct) EXISTS %s = %v, %v; want false", kk, n, err)
			}
			if _, err := c0.Get(kk).Result(); err != redis.Nil {
				t.Fatalf("db 0 client GET %s: err = %v, want redis.Nil", kk, err)
			}
			if v, err := c1.Get(kk).Result(); err != nil || v != want {
				t.Fatalf("db 1 client GET %s = %q, %v", kk, v, err)
			}
		}
	}
	if v, err := d1.Get(key(t, "n")).Result(); err != nil || v != "1" {
		t.Fatalf("db 1 counter = %q, %v", v, err)
	}
	if n, err := d1.DbSize().Result(); err != nil || n != 8*25+1 {
		t.Fatalf("db 1 DBSIZE = %d, %v; want %d", n, err, 8*25+1)
	}
	if ps := c1.PoolStats(); ps.TotalConns < 2 {
		t.Logf("only %d pooled connections were made", ps.TotalConns)
	}
}

// One pipeline of 1,000 mixed commands (values, nils, errors, lists, hashes),
// every reply checked; then four such pipelines at once on one client.
func TestPipelineMixed(t *testing.T) {
	c := newClient(t, nil)
	if err := runMixedPipeline(c, key(t, "p0")); err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	errs := make([]error, 4)
	for g := range errs {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			errs[g] = runMixedPipeline(c, key(t, fmt.Sprintf("p%d", g+1)))
		}(g)
	}
	if !within(t, 30*time.Second, "4 concurrent pipelines", wg.Wait) {
		return
	}
	for g, err := range errs {
		if err != nil {
			t.Errorf("pipeline %d: %v", g+1, err)
		}
	}
}

func runMixedPipeline(c *redis.Client, prefix string) error {
	const n = 1000
	type check func(redis.Cmder) error
	pipe := c.Pipeline()
	defer pipe.Close()
	checks := make([]check, 0, n)

	str := prefix + ":str"
	ctr := prefix + ":ctr"
	list := prefix + ":list"
	hash := prefix + ":hash"
	var counter, listLen int64
	big := strings.Repeat("B", 64*1024)
	for i := 0; len(checks) < n; i++ {
		switch i % 10 {
		case 0:
			k := fmt.Sprintf("%s:k%d", prefix, i)
			v := fmt.Sprintf("value-%d", i)
			if i%100 == 0 {
				v = big + v
			}
			pipe.Set(k, v, 0)
			checks = append(checks, wantStatus("OK"))
			pipe.Get(k)
			checks = append(checks, wantString(v))
		case 1:
			counter++
			pipe.Incr(ctr)
			checks = append(checks, wantInt(counter))
		case 2:
			pipe.Get(fmt.Sprintf("%s:missing%d", prefix, i))
			checks = append(checks, wantNil())
		case 3:
			listLen++
			pipe.RPush(list, i)
			checks = append(checks, wantInt(listLen))
		case 4:
			pipe.HSet(hash, fmt.Sprint(i), fmt.Sprint(i*i))
			checks = append(checks, wantBool(true))
			pipe.HGet(hash, fmt.Sprint(i))
			checks = append(checks, wantString(fmt.Sprint(i*i)))
		case 5:
			pipe.Set(str, "not a number", 0)
			checks = append(checks, wantStatus("OK"))
			pipe.Incr(str)
			checks = append(checks, wantErr("ERR value is not an integer or out of range"))
		case 6:
			pipe.Echo(fmt.Sprintf("echo %d\r\n", i))
			checks = append(checks, wantString(fmt.Sprintf("echo %d\r\n", i)))
		case 7:
			pipe.LIndex(list, listLen-1)
			checks = append(checks, wantString(fmt.Sprint(i-4)))
		case 8:
			pipe.Process(redis.NewCmd("set", prefix+":onlykey")) // wrong arity
			checks = append(checks, wantErr("ERR wrong number of arguments for 'set' command"))
		case 9:
			counter += 10
			pipe.IncrBy(ctr, 10)
			checks = append(checks, wantInt(counter))
			pipe.Ping()
			checks = append(checks, wantStatus("PONG"))
		}
	}
	cmds, err := pipe.Exec()
	if len(cmds) < n {
		return fmt.Errorf("Exec returned %d commands (err %v), want >= %d", len(cmds), err, n)
	}
	// Exec reports the first failed command (here a GET of a missing key).
	var firstErr error
	for _, cmd := range cmds {
		if firstErr = cmd.Err(); firstErr != nil {
			break
		}
	}
	if err != redis.Nil || err != firstErr {
		return fmt.Errorf("Exec err = %v, want the first command's error %v (redis.Nil)", err, firstErr)
	}
	for i, cmd := range cmds {
		if e := checks[i](cmd); e != nil {
			return fmt.Errorf("reply %d (%.80s): %v", i, cmd.String(), e)
		}
	}
	// The pooled connection is still in step afterwards.
	if v, err := c.Get(ctr).Int64(); err != nil || v != counter {
		return fmt.Errorf("GET counter after pipeline = %d, %v; want %d", v, err, counter)
	}
	return nil
}

func wantStatus(s string) func(redis.Cmder) error {
	return func(c redis.Cmder) error {
		v, err := c.(*redis.StatusCmd).Result()
		if err != nil || v != s {
			return fmt.Errorf("got %q, %v; want %q", v, err, s)
		}
		return nil
	}
}

func wantString(s string) func(redis.Cmder) error {
	return func(c redis.Cmder) error {
		v, err := c.(*redis.StringCmd).Result()
		if err != nil || v != s {
			return fmt.Errorf("got %.40q (%d bytes), %v; want %.40q", v, len(v), err, s)
		}
		return nil
	}
}

func wantInt(n int64) func(redis.Cmder) error {
	return func(c redis.Cmder) error {
		v, err := c.(*redis.IntCmd).Result()
		if err != nil || v != n {
			return fmt.Errorf("got %d, %v; want %d", v, err, n)
		}
		return nil
	}
}

func wantBool(b bool) func(redis.Cmder) error {
	return func(c redis.Cmder) error {
		v, err := c.(*redis.BoolCmd).Result()
		if err != nil || v != b {
			return fmt.Errorf("got %v, %v; want %v", v, err, b)
		}
		return nil
	}
}

func wantNil() func(redis.Cmder) error {
	return func(c redis.Cmder) error {
		if err := c.Err(); err != redis.Nil {
			return fmt.Errorf("err = %v, want redis.Nil", err)
		}
		return nil
	}
}

func wantErr(msg string) func(redis.Cmder) error {
	return func(c redis.Cmder) error {
		if err := c.Err(); err == nil || err.Error() != msg {
			return fmt.Errorf("err = %v, want %q", err, msg)
		}
		return nil
	}
}

// Lua: EVAL with keys and args, every reply type, script errors, SCRIPT LOAD,
// EVALSHA, NOSCRIPT, and Script.Run's EVALSHA-then-EVAL fallback.
func TestLua(t *testing.T) {
	c := newClient(t, nil)
	k1, k2 := key(t, "a"), key(t, "b")

	setScript := "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCRBY', KEYS[2], ARGV[2])"
	if v, err := c.Eval(setScript, []string{k1, k2}, "hello", 5).Result(); err != nil || v != int64(5) {
		t.Fatalf("EVAL set/incrby = %#v, %v", v, err)
	}
	if v, err := redisClient(t, 0).Get(k1).Result(); err != nil || v != "hello" {
		t.Fatalf("direct GET after EVAL = %q, %v", v, err)
	}

	v, err := c.Eval("return {1, 'two', {3, 'four'}, redis.call('GET', KEYS[1])}", []string{k1}).Result()
	if err != nil {
		t.Fatalf("EVAL table: %v", err)
	}
	arr, ok := v.([]interface{})
	if !ok || len(arr) != 4 || arr[0] != int64(1) || arr[1] != "two" || arr[3] != "hello" {
		t.Fatalf("EVAL table = %#v", v)
	}
	if inner, ok := arr[2].([]interface{}); !ok || len(inner) != 2 || inner[0] != int64(3) || inner[1] != "four" {
		t.Fatalf("EVAL nested table = %#v", arr[2])
	}
	if _, err := c.Eval("return false", nil).Result(); err != redis.Nil {
		t.Fatalf("EVAL return false: err = %v, want redis.Nil", err)
	}
	if v, err := c.Eval("return redis.status_reply('FINE')", nil).Result(); err != nil || v != "FINE" {
		t.Fatalf("EVAL status = %#v, %v", v, err)
	}
	if _, err := c.Eval("return redis.error_reply('MYERR custom failure')", nil).Result(); err == nil || err.Error() != "MYERR custom failure" {
		t.Fatalf("EVAL error_reply: err = %v", err)
	}
	if _, err := c.Eval("return redis.call('INCR', KEYS[1])", []string{k1}).Result(); err == nil || !strings.Contains(err.Error(), "not an integer") {
		t.Fatalf("EVAL failing call: err = %v", err)
	}

	const src = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
	sha, err := c.ScriptLoad(src).Result()
	if err != nil || len(sha) != 40 {
		t.Fatalf("SCRIPT LOAD = %q, %v", sha, err)
	}
	for i := 1; i <= 10; i++ {
		if v, err := c.EvalSha(sha, []string{k2}, 2).Result(); err != nil || v != int64(5+2*i) {
			t.Fatalf("EVALSHA #%d = %#v, %v", i, v, err)
		}
	}
	if ex, err := c.ScriptExists(sha).Result(); err != nil || len(ex) != 1 || !ex[0] {
		t.Fatalf("SCRIPT EXISTS = %v, %v", ex, err)
	}
	if _, err := c.EvalSha(strings.Repeat("0", 40), nil).Result(); err == nil || !strings.HasPrefix(err.Error(), "NOSCRIPT") {
		t.Fatalf("EVALSHA unknown: err = %v, want NOSCRIPT", err)
	}

	s := redis.NewScript(fmt.Sprintf("return ARGV[1] .. '-%d'", time.Now().UnixNano()))
	if v, err := s.Run(c, nil, "x").Result(); err != nil || !strings.HasPrefix(v.(string), "x-") {
		t.Fatalf("Script.Run (NOSCRIPT then EVAL) = %#v, %v", v, err)
	}
	if v, err := s.EvalSha(c, nil, "y").Result(); err != nil || !strings.HasPrefix(v.(string), "y-") {
		t.Fatalf("Script.EvalSha after EVAL cached it = %#v, %v", v, err)
	}
}

// The sidecar pattern: one client, PoolSize 10, shared by 64 goroutines each
// doing 200 INCRs. Every reply 1..12,800 comes back exactly once, and the
// final count is exactly 12,800.
func TestSidecarPool(t *testing.T) {
	const goroutines, each = 64, 200
	const total = goroutines * each
	c := newClient(t, &redis.Options{PoolSize: 10})
	k := key(t, "n")

	replies := make([][]int64, goroutines)
	errs := make([]error, goroutines)
	var wg sync.WaitGroup
	deadline := time.Now().Add(30 * time.Second)
	start := time.Now()
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			out := make([]int64, 0, each)
			for i := 0; i < each; i++ {
				if time.Now().After(deadline) {
					errs[g] = fmt.Errorf("deadline passed after %d INCRs", i)
					break
				}
				v, err := c.Incr(k).Result()
				if err != nil {
					errs[g] = fmt.Errorf("INCR #%d: %v", i, err)
					break
				}
				out = append(out, v)
			}
			replies[g] = out
		}(g)
	}
	if !within(t, 40*time.Second, "64 goroutines x 200 INCR", wg.Wait) {
		return
	}
	elapsed := time.Since(start)
	for g, err := range errs {
		if err != nil {
			t.Fatalf("goroutine %d: %v", g, err)
		}
	}
	seen := make([]bool, total+1)
	for g, out := range replies {
		last := int64(0)
		for _, v := range out {
			if v < 1 || v > total || seen[v] {
				t.Fatalf("goroutine %d got INCR reply %d: out of range or duplicate", g, v)
			}
			if v <= last {
				t.Fatalf("goroutine %d: INCR replies not increasing (%d after %d)", g, v, last)
			}
			seen[v], last = true, v
		}
	}
	if v, err := redisClient(t, 0).Get(k).Int64(); err != nil || v != total {
		t.Fatalf("final count (direct) = %d, %v; want %d", v, err, total)
	}
	if ps := c.PoolStats(); ps.TotalConns > 10 {
		t.Fatalf("pool made %d connections, PoolSize is 10", ps.TotalConns)
	}
	t.Logf("%d INCRs in %s (%.0f/s)", total, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds())
}

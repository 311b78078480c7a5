package respipe_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	redis "gopkg.in/redis.v5"
)

// Client.Watch + Tx.Pipelined (WATCH, GET, MULTI ... EXEC, UNWATCH on one
// connection), and Client.TxPipelined (MULTI ... EXEC without WATCH).
func TestTxWatchPipelined(t *testing.T) {
	c := newClient(t, &redis.Options{PoolSize: 1})
	k, k2 := key(t, "k"), key(t, "n")
	if err := c.Set(k, "10", 0).Err(); err != nil {
		t.Fatal(err)
	}

	for round := int64(1); round <= 3; round++ {
		err := c.Watch(func(tx *redis.Tx) error {
			n, err := tx.Get(k).Int64()
			if err != nil {
				return fmt.Errorf("GET under WATCH: %v", err)
			}
			cmds, err := tx.Pipelined(func(p *redis.Pipeline) error {
				p.Set(k, n+1, 0)
				p.Incr(k2)
				p.Get(k)
				return nil
			})
			if err != nil {
				return fmt.Errorf("EXEC: %v", err)
			}
			if len(cmds) != 3 {
				return fmt.Errorf("EXEC returned %d commands", len(cmds))
			}
			for _, e := range []error{
				wantStatus("OK")(cmds[0]),
				wantInt(round)(cmds[1]),
				wantString(fmt.Sprint(n + 1))(cmds[2]),
			} {
				if e != nil {
					return fmt.Errorf("EXEC reply: %v", e)
				}
			}
			return nil
		}, k)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	d := redisClient(t, 0)
	if v, err := d.Get(k).Result(); err != nil || v != "13" {
		t.Fatalf("direct GET = %q, %v; want 13", v, err)
	}

	cmds, err := c.TxPipelined(func(p *redis.Pipeline) error {
		p.Incr(k2)
		p.RPush(key(t, "list"), "a", "b")
		p.LRange(key(t, "list"), 0, -1)
		return nil
	})
	if err != nil || len(cmds) != 3 {
		t.Fatalf("TxPipelined: %d cmds, %v", len(cmds), err)
	}
	if e := wantInt(4)(cmds[0]); e != nil {
		t.Fatalf("INCR in MULTI: %v", e)
	}
	if l, err := cmds[2].(*redis.StringSliceCmd).Result(); err != nil || strings.Join(l, ",") != "a,b" {
		t.Fatalf("LRANGE in MULTI = %v, %v", l, err)
	}
	// The single pooled connection is back to normal.
	if v, err := c.Get(k2).Result(); err != nil || v != "4" {
		t.Fatalf("GET after transactions = %q, %v", v, err)
	}
}

// Errors inside transactions: a command rejected while queueing aborts EXEC
// (EXECABORT) and nothing runs; a command failing at run time fails alone;
// MULTI/DISCARD and misuse errors are Redis's own.
func TestTxErrors(t *testing.T) {
	c := newClient(t, &redis.Options{PoolSize: 1})
	d := redisClient(t, 0)
	k, k2 := key(t, "k"), key(t, "n")

	// Every check is reported (not only the first): a proxy that refuses
	// MULTI but forwards what follows would run the "queued" SET and INCR
	// for real, and that must show.
	err := c.Watch(func(tx *redis.Tx) error {
		bad := redis.NewCmd("set", key(t, "only-key"))
		cmds, err := tx.Pipelined(func(p *redis.Pipeline) error {
			p.Set(k, "queued", 0)
			_ = p.Process(bad)
			p.Incr(k2)
			return nil
		})
		if err == nil || !strings.HasPrefix(err.Error(), "EXECABORT") {
			t.Errorf("EXEC after a queueing error: err = %v, want EXECABORT", err)
		}
		if len(cmds) != 3 {
			t.Errorf("got %d cmds back", len(cmds))
		}
		if e := bad.Err(); e == nil || e.Error() != "ERR wrong number of arguments for 'set' command" {
			t.Errorf("queued bad command: err = %v", e)
		}
		return nil
	})
	if err != nil {
		t.Errorf("Watch: %v", err)
	}
	for _, kk := range []string{k, k2} {
		if n, err := d.Exists(kk).Result(); err != nil || n {
			t.Errorf("after EXECABORT, %s exists = %v, %v (the aborted transaction ran)", kk, n, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// Run-time failure: only that command fails; the rest of EXEC applies.
	cmds, err := c.TxPipelined(func(p *redis.Pipeline) error {
		p.Set(k, "abc", 0)
		p.Incr(k)
		p.Set(k2, "after", 0)
		return nil
	})
	if err == nil || err.Error() != "ERR value is not an integer or out of range" {
		t.Fatalf("EXEC with a failing INCR: err = %v", err)
	}
	if len(cmds) != 3 {
		t.Fatalf("got %d cmds", len(cmds))
	}
	if e := wantStatus("OK")(cmds[0]); e != nil {
		t.Fatal(e)
	}
	if e := wantStatus("OK")(cmds[2]); e != nil {
		t.Fatal(e)
	}
	if v, err := d.Get(k2).Result(); err != nil || v != "after" {
		t.Fatalf("direct GET %s = %q, %v", k2, v, err)
	}

	// Raw MULTI / DISCARD / EXEC on the transaction's connection.
	err = c.Watch(func(tx *redis.Tx) error {
		steps := []struct {
			args []interface{}
			want string // "+X" status, "-prefix" error
		}{
			{[]interface{}{"exec"}, "-ERR EXEC without MULTI"},
			{[]interface{}{"discard"}, "-ERR DISCARD without MULTI"},
			{[]interface{}{"multi"}, "+OK"},
			{[]interface{}{"multi"}, "-ERR MULTI calls can not be nested"},
			{[]interface{}{"set", k, "discarded"}, "+QUEUED"},
			{[]interface{}{"watch", k}, "-ERR WATCH inside MULTI is not allowed"},
			{[]interface{}{"discard"}, "+OK"},
			{[]interface{}{"get", k}, "+abc"},
		}
		for _, s := range steps {
			cmd := redis.NewCmd(s.args...)
			_ = tx.Process(cmd)
			v, err := cmd.Result()
			switch {
			case s.want[0] == '-':
				if err == nil || !strings.HasPrefix(err.Error(), s.want[1:]) {
					return fmt.Errorf("%v: got %#v, %v; want error %q", s.args, v, err, s.want[1:])
				}
			default:
				if err != nil || v != s.want[1:] {
					return fmt.Errorf("%v: got %#v, %v; want %q", s.args, v, err, s.want[1:])
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(k).Result(); err != nil || v != "abc" {
		t.Fatalf("GET after DISCARD = %q, %v", v, err)
	}
}

// EXEC returns nil (go-redis: TxFailedErr) when another client modified the
// watched key, and nothing queued runs. UNWATCH (sent by go-redis when the
// Watch function returns) really clears the watch on the pooled connection.
func TestTxFailedAfterConcurrentWrite(t *testing.T) {
	c := newClient(t, &redis.Options{PoolSize: 1})
	other := newClient(t, nil)
	d := redisClient(t, 0)
	k, k2 := key(t, "k"), key(t, "side")
	if err := c.Set(k, "1", 0).Err(); err != nil {
		t.Fatal(err)
	}

	var execCmds []redis.Cmder
	err := c.Watch(func(tx *redis.Tx) error {
		if v, err := tx.Get(k).Result(); err != nil || v != "1" {
			return fmt.Errorf("GET under WATCH = %q, %v", v, err)
		}
		if err := other.Set(k, "changed-by-other", 0).Err(); err != nil {
			return fmt.Errorf("other client's SET: %v", err)
		}
		var err error
		execCmds, err = tx.Pipelined(func(p *redis.Pipeline) error {
			p.Set(k, "mine", 0)
			p.Incr(k2)
			return nil
		})
		return err
	}, k)
	if err != redis.TxFailedErr {
		t.Fatalf("Watch returned %v, want redis.TxFailedErr (EXEC nil)", err)
	}
	if len(execCmds) != 2 {
		t.Fatalf("got %d cmds", len(execCmds))
	}
	if v, err := d.Get(k).Result(); err != nil || v != "changed-by-other" {
		t.Fatalf("direct GET %s = %q, %v; want changed-by-other", k, v, err)
	}
	if n, err := d.Exists(k2).Result(); err != nil || n {
		t.Fatalf("%s exists = %v, %v; the failed EXEC must not run it", k2, n, err)
	}

	// A Watch whose function gives up without EXEC: go-redis sends UNWATCH.
	errGiveUp := errors.New("give up")
	if err := c.Watch(func(tx *redis.Tx) error {
		if err := tx.Get(k).Err(); err != nil {
			return err
		}
		return errGiveUp
	}, k); err != errGiveUp {
		t.Fatalf("Watch = %v, want errGiveUp", err)
	}
	if err := other.Set(k, "changed-again", 0).Err(); err != nil {
		t.Fatal(err)
	}
	// Same (only) pooled connection: no watch is left, so this EXEC runs.
	cmds, err := c.TxPipelined(func(p *redis.Pipeline) error {
		p.Set(k, "after-unwatch", 0)
		return nil
	})
	if err != nil || len(cmds) != 1 {
		t.Fatalf("MULTI/EXEC after UNWATCH: %d cmds, %v (a stale WATCH survived?)", len(cmds), err)
	}
	if v, err := d.Get(k).Result(); err != nil || v != "after-unwatch" {
		t.Fatalf("direct GET = %q, %v", v, err)
	}
}

// 50 goroutines x 200 optimistic-locking loops on one key, through one
// client's pool (default PoolSize 10): WATCH k; GET k -> n; MULTI; INCR k;
// EXEC; retry on a nil EXEC. Each successful EXEC's INCR must return n+1
// (WATCH really guarded it), and the key ends at exactly 10,000.
func TestTxConcurrentIncr(t *testing.T) {
	const goroutines, each = 50, 200
	c := newClient(t, nil)
	k := key(t, "n")

	var retries, execs int64
	errs := make([]error, goroutines)
	deadline := time.Now().Add(45 * time.Second)
	start := time.Now()
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				for {
					if time.Now().After(deadline) {
						errs[g] = fmt.Errorf("deadline passed at increment %d", i)
						return
					}
					err := c.Watch(func(tx *redis.Tx) error {
						n, err := tx.Get(k).Int64()
						if err != nil && err != redis.Nil {
							return err
						}
						cmds, err := tx.Pipelined(func(p *redis.Pipeline) error {
							p.Incr(k)
							return nil
						})
						if err != nil {
							return err
						}
						if v := cmds[0].(*redis.IntCmd).Val(); v != n+1 {
							return fmt.Errorf("INCR in EXEC = %d, but GET under WATCH saw %d", v, n)
						}
						return nil
					}, k)
					atomic.AddInt64(&execs, 1)
					if err == redis.TxFailedErr {
						atomic.AddInt64(&retries, 1)
						continue
					}
					if err != nil {
						errs[g] = fmt.Errorf("increment %d: %v", i, err)
						return
					}
					break
				}
			}
		}(g)
	}
	if !within(t, 60*time.Second, "50 goroutines x 200 WATCH/MULTI/INCR", wg.Wait) {
		return
	}
	for g, err := range errs {
		if err != nil {
			t.Fatalf("goroutine %d: %v", g, err)
		}
	}
	if v, err := redisClient(t, 0).Get(k).Int64(); err != nil || v != goroutines*each {
		t.Fatalf("final count (direct) = %d, %v; want %d", v, err, goroutines*each)
	}
	t.Logf("%d transactions (%d retried after a nil EXEC) in %s",
		execs, retries, time.Since(start).Round(time.Millisecond))
}

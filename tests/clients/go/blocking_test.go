package respipe_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	redis "gopkg.in/redis.v5"
)

type popResult struct {
	val     []string
	err     error
	elapsed time.Duration
}

func blpopAsync(c *redis.Client, timeout time.Duration, keys ...string) chan popResult {
	out := make(chan popResult, 1)
	go func() {
		start := time.Now()
		v, err := c.BLPop(timeout, keys...).Result()
		out <- popResult{v, err, time.Since(start)}
	}()
	return out
}

// BLPOP on empty lists times out after its timeout with a nil reply; on a
// non-empty list it answers at once.
func TestBLPopTimeout(t *testing.T) {
	c := newClient(t, nil)
	k := key(t, "q")

	start := time.Now()
	v, err := c.BLPop(time.Second, k, key(t, "q2")).Result()
	elapsed := time.Since(start)
	if err != redis.Nil {
		t.Fatalf("BLPOP on empty lists = %v, %v; want redis.Nil after 1 s", v, err)
	}
	if elapsed < 900*time.Millisecond || elapsed > 2500*time.Millisecond {
		t.Fatalf("BLPOP 1 s timed out after %s", elapsed)
	}
	// The connection is usable afterwards.
	if err := c.RPush(k, "x").Err(); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if v, err := c.BLPop(5*time.Second, k).Result(); err != nil || len(v) != 2 || v[0] != k || v[1] != "x" {
		t.Fatalf("BLPOP on a non-empty list = %v, %v", v, err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("BLPOP on a non-empty list took %s", d)
	}
}

// A waiting BLPOP is woken by another client's RPUSH, gets exactly that
// element, from the key that was pushed.
func TestBLPopUnblockedByPush(t *testing.T) {
	c := newClient(t, nil)
	other := newClient(t, nil)
	ka, kb := key(t, "a"), key(t, "b")

	res := blpopAsync(c, 10*time.Second, ka, kb)
	select {
	case r := <-res:
		t.Fatalf("BLPOP returned before any push: %v, %v", r.val, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	if n, err := other.RPush(kb, "first", "second").Result(); err != nil || n != 2 {
		t.Fatalf("RPUSH = %d, %v", n, err)
	}
	pushed := time.Now()
	select {
	case r := <-res:
		if r.err != nil || len(r.val) != 2 || r.val[0] != kb || r.val[1] != "first" {
			t.Fatalf("BLPOP = %v, %v; want [%s first]", r.val, r.err, kb)
		}
		if d := time.Since(pushed); d > time.Second {
			t.Fatalf("BLPOP woke %s after the push", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("BLPOP not woken 5 s after RPUSH")
	}
	if l, err := redisClient(t, 0).LRange(kb, 0, -1).Result(); err != nil || strings.Join(l, ",") != "second" {
		t.Fatalf("list after BLPOP (direct) = %v, %v", l, err)
	}

	// Several waiters, served first come first served, one element each.
	q := key(t, "fifo")
	var waiters []chan popResult
	for i := 0; i < 3; i++ {
		waiters = append(waiters, blpopAsync(c, 10*time.Second, q))
		time.Sleep(100 * time.Millisecond) // fix the order they block in
	}
	for i := 0; i < 3; i++ {
		if err := other.RPush(q, fmt.Sprint(i)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for i, w := range waiters {
		select {
		case r := <-w:
			if r.err != nil || len(r.val) != 2 || r.val[1] != fmt.Sprint(i) {
				t.Fatalf("waiter %d: BLPOP = %v, %v; want [%s %d]", i, r.val, r.err, q, i)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("waiter %d not woken", i)
		}
	}
}

// While one pooled connection sits in BLPOP q 0 (forever), the same client's
// other connections and other clients keep running fast commands at normal
// latency (p99 < 50 ms); then a push releases the BLPOP.
func TestBLPopForeverDoesNotStallOthers(t *testing.T) {
	c := newClient(t, &redis.Options{PoolSize: 10})
	other := newClient(t, nil)
	q := key(t, "q")

	res := blpopAsync(c, 0, q)
	select {
	case r := <-res:
		t.Fatalf("BLPOP q 0 returned at once: %v, %v", r.val, r.err)
	case <-time.After(200 * time.Millisecond):
	}

	const workers, each = 8, 250
	lat := make([][]time.Duration, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			cl := c
			if w%2 == 1 {
				cl = other
			}
			k := key(t, fmt.Sprintf("w%d", w))
			for i := 0; i < each; i++ {
				start := time.Now()
				var err error
				switch i % 3 {
				case 0:
					err = cl.Set(k, i, 0).Err()
				case 1:
					var v string
					v, err = cl.Get(k).Result()
					if err == nil && v != fmt.Sprint(i-1) {
						err = fmt.Errorf("GET = %q, want %d", v, i-1)
					}
				case 2:
					err = cl.Incr(k + ":n").Err()
				}
				lat[w] = append(lat[w], time.Since(start))
				if err != nil {
					errs[w] = fmt.Errorf("command %d: %v", i, err)
					return
				}
			}
		}(w)
	}
	if !within(t, 30*time.Second, "fast commands beside BLPOP q 0", wg.Wait) {
		return
	}
	var all []time.Duration
	for w, err := range errs {
		if err != nil {
			t.Fatalf("worker %d: %v", w, err)
		}
		all = append(all, lat[w]...)
	}
	p := p99(all)
	t.Logf("%d fast commands beside a blocked BLPOP: p99 %s", len(all), p)
	if p >= 50*time.Millisecond {
		t.Errorf("p99 latency %s beside a blocked BLPOP, want < 50 ms", p)
	}

	select {
	case r := <-res:
		t.Fatalf("BLPOP q 0 returned before the push: %v, %v", r.val, r.err)
	default:
	}
	if err := other.RPush(q, "wake").Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-res:
		if r.err != nil || len(r.val) != 2 || r.val[0] != q || r.val[1] != "wake" {
			t.Fatalf("BLPOP q 0 = %v, %v; want [%s wake]", r.val, r.err, q)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("BLPOP q 0 not woken 5 s after RPUSH")
	}
	// Its connection went back to the pool in a sane state.
	for i := 0; i < 20; i++ {
		if v, err := c.Echo(fmt.Sprint(i)).Result(); err != nil || v != fmt.Sprint(i) {
			t.Fatalf("ECHO %d after BLPOP = %q, %v", i, v, err)
		}
	}
}

package respipe_test

import (
	"fmt"
	"testing"
	"time"

	redis "gopkg.in/redis.v5"
)

// receiveSub reads the next push and requires it to be this confirmation.
func receiveSub(ps *redis.PubSub, kind, channel string, count int) error {
	msg, err := ps.ReceiveTimeout(5 * time.Second)
	if err != nil {
		return fmt.Errorf("waiting for %s %s: %v", kind, channel, err)
	}
	s, ok := msg.(*redis.Subscription)
	if !ok || s.Kind != kind || s.Channel != channel || s.Count != count {
		return fmt.Errorf("got %#v, want %s %s count %d", msg, kind, channel, count)
	}
	return nil
}

// receiveN reads n messages, requiring payloads "0".."n-1" in order on the
// given channel (and pattern, for PSUBSCRIBE).
func receiveN(ps *redis.PubSub, n int, channel, pattern string) error {
	for i := 0; i < n; i++ {
		msg, err := ps.ReceiveTimeout(5 * time.Second)
		if err != nil {
			return fmt.Errorf("message %d: %v", i, err)
		}
		m, ok := msg.(*redis.Message)
		if !ok {
			return fmt.Errorf("message %d: got %#v", i, msg)
		}
		if m.Channel != channel || m.Pattern != pattern || m.Payload != fmt.Sprint(i) {
			return fmt.Errorf("message %d: got channel %q pattern %q payload %q (lost or reordered)",
				i, m.Channel, m.Pattern, m.Payload)
		}
	}
	return nil
}

// SUBSCRIBE and PSUBSCRIBE (with confirmations and PING in subscribed mode),
// 10,000 published messages received in order by both with none lost,
// UNSUBSCRIBE / PUNSUBSCRIBE, and the publisher's receiver counts throughout.
func TestPubSub(t *testing.T) {
	const n = 10000
	c := newClient(t, nil)
	pub := newClient(t, nil)
	ch := key(t, "ch")
	pattern := key(t, "*")
	ch2, ch3 := key(t, "ch2"), key(t, "ch3")

	sub, err := c.Subscribe(ch)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer sub.Close()
	if err := receiveSub(sub, "subscribe", ch, 1); err != nil {
		t.Fatal(err)
	}
	// PING in subscribed mode answers with a pong push.
	if err := sub.Ping("hello"); err != nil {
		t.Fatalf("PubSub.Ping: %v", err)
	}
	if msg, err := sub.ReceiveTimeout(5 * time.Second); err != nil {
		t.Fatalf("pong: %v", err)
	} else if p, ok := msg.(*redis.Pong); !ok || p.Payload != "hello" {
		t.Fatalf("pong = %#v", msg)
	}

	psub, err := c.PSubscribe(pattern)
	if err != nil {
		t.Fatalf("PSubscribe: %v", err)
	}
	defer psub.Close()
	if err := receiveSub(psub, "psubscribe", pattern, 1); err != nil {
		t.Fatal(err)
	}

	// The same client still runs ordinary commands on its other connections.
	if err := c.Set(key(t, "plain"), "ok", 0).Err(); err != nil {
		t.Fatalf("SET while subscribed elsewhere: %v", err)
	}

	subDone := make(chan error, 1)
	psubDone := make(chan error, 1)
	go func() { subDone <- receiveN(sub, n, ch, "") }()
	go func() { psubDone <- receiveN(psub, n, ch, pattern) }()

	start := time.Now()
	// Half one PUBLISH per round trip, half in pipelines of 500.
	for i := 0; i < n/2; i++ {
		if r, err := pub.Publish(ch, fmt.Sprint(i)).Result(); err != nil || r != 2 {
			t.Fatalf("PUBLISH %d = %d, %v; want 2 receivers", i, r, err)
		}
	}
	for i := n / 2; i < n; i += 500 {
		cmds, err := pub.Pipelined(func(p *redis.Pipeline) error {
			for j := i; j < i+500; j++ {
				p.Publish(ch, fmt.Sprint(j))
			}
			return nil
		})
		if err != nil {
			t.Fatalf("pipelined PUBLISH: %v", err)
		}
		for j, cmd := range cmds {
			if e := wantInt(2)(cmd); e != nil {
				t.Fatalf("PUBLISH %d: %v", i+j, e)
			}
		}
	}
	for name, done := range map[string]chan error{"SUBSCRIBE": subDone, "PSUBSCRIBE": psubDone} {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%s receiver: %v", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s receiver: not done 30 s after publishing", name)
		}
	}
	t.Logf("%d messages to 2 subscribers in %s", n, time.Since(start).Round(time.Millisecond))

	// More channels on the same subscription: one confirmation each.
	if err := sub.Subscribe(ch2, ch3); err != nil {
		t.Fatal(err)
	}
	if err := receiveSub(sub, "subscribe", ch2, 2); err != nil {
		t.Fatal(err)
	}
	if err := receiveSub(sub, "subscribe", ch3, 3); err != nil {
		t.Fatal(err)
	}
	if r, err := pub.Publish(ch3, "to-ch3").Result(); err != nil || r != 2 {
		t.Fatalf("PUBLISH ch3 = %d, %v; want 2", r, err)
	}
	if m, err := sub.ReceiveMessage(); err != nil || m.Channel != ch3 || m.Payload != "to-ch3" {
		t.Fatalf("message on ch3 = %#v, %v", m, err)
	}
	if m, err := psub.ReceiveMessage(); err != nil || m.Channel != ch3 || m.Pattern != pattern {
		t.Fatalf("pmessage on ch3 = %#v, %v", m, err)
	}

	// UNSUBSCRIBE one channel, then all; PUNSUBSCRIBE.
	if err := sub.Unsubscribe(ch); err != nil {
		t.Fatal(err)
	}
	if err := receiveSub(sub, "unsubscribe", ch, 2); err != nil {
		t.Fatal(err)
	}
	if r, err := pub.Publish(ch, "after-unsubscribe").Result(); err != nil || r != 1 {
		t.Fatalf("PUBLISH after UNSUBSCRIBE = %d, %v; want 1 (the pattern)", r, err)
	}
	if err := sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	// UNSUBSCRIBE with no argument confirms each remaining channel, in
	// Redis's own (unspecified) order, counting down to 0.
	left := map[string]bool{ch2: true, ch3: true}
	for count := 1; count >= 0; count-- {
		msg, err := sub.ReceiveTimeout(5 * time.Second)
		if err != nil {
			t.Fatalf("UNSUBSCRIBE (all) confirmation: %v", err)
		}
		s, ok := msg.(*redis.Subscription)
		if !ok || s.Kind != "unsubscribe" || !left[s.Channel] || s.Count != count {
			t.Fatalf("UNSUBSCRIBE (all) confirmation = %#v, want one of %v with count %d", msg, left, count)
		}
		delete(left, s.Channel)
	}
	if m, err := psub.ReceiveMessage(); err != nil || m.Payload != "after-unsubscribe" {
		t.Fatalf("pmessage after UNSUBSCRIBE = %#v, %v", m, err)
	}
	if err := psub.PUnsubscribe(pattern); err != nil {
		t.Fatal(err)
	}
	if err := receiveSub(psub, "punsubscribe", pattern, 0); err != nil {
		t.Fatal(err)
	}
	if r, err := pub.Publish(ch, "nobody").Result(); err != nil || r != 0 {
		t.Fatalf("PUBLISH with no subscribers = %d, %v; want 0", r, err)
	}
	if n, err := redisClient(t, 0).PubSubNumSub(ch, ch2, ch3).Result(); err != nil || n[ch] != 0 || n[ch2] != 0 || n[ch3] != 0 {
		t.Fatalf("PUBSUB NUMSUB (direct) = %v, %v; want all 0", n, err)
	}
}

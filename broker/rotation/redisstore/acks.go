package redisstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
)

var _ rotation.Acker = (*Store)(nil)

// AckKey returns the Redis key name of client's acks: a hash in the slot
// of the client's State (the same hash tag).
func (s *Store) AckKey(client string) string {
	sum := sha256.Sum256([]byte(client))
	return s.prefix + "rotation:acks:{" + hex.EncodeToString(sum[:]) + "}"
}

// ackScript sets field ARGV[1] of the hash KEYS[1] to "<expires> <at>
// <kid>" (ARGV[2]), times in milliseconds by Redis's own clock, expiring
// ARGV[3] ms from now, and keeps the hash itself at least that long.
var ackScript = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call("HSET", KEYS[1], ARGV[1], string.format("%.0f %.0f ", now + ttl, now) .. ARGV[2])
if redis.call("PTTL", KEYS[1]) < ttl then
	redis.call("PEXPIRE", KEYS[1], ttl)
end
return 1
`)

// acksScript returns the fields of the hash KEYS[1] whose expiry is after
// Redis's clock now, as a flat list of field, value, and deletes the
// others.
var acksScript = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call("HGETALL", KEYS[1])
local live = {}
for i = 1, #all, 2 do
	local exp = tonumber(string.match(all[i + 1], "^(%d+) "))
	if exp == nil or exp <= now then
		redis.call("HDEL", KEYS[1], all[i])
	else
		live[#live + 1] = all[i]
		live[#live + 1] = all[i + 1]
	end
end
return live
`)

// Ack implements rotation.Acker: field replica of client's ack hash
// (AckKey) holds kid with its time and expiry by Redis's clock, so that
// the replicas' clocks need not agree. The hash expires as a whole once no
// replica acks.
func (s *Store) Ack(ctx context.Context, client, replica, kid string, ttl time.Duration) error {
	if err := checkClient(client); err != nil {
		return err
	}
	if err := rotation.CheckReplicaID(replica); err != nil {
		return err
	}
	if ttl < time.Millisecond {
		return fmt.Errorf("redisstore: client %q: ack: ttl %v: want at least 1ms", client, ttl)
	}
	if kid == "" {
		return fmt.Errorf("redisstore: client %q: ack: empty kid", client)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := ackScript.Run(ctx, s.rdb, []string{s.AckKey(client)}, replica, kid, ttl.Milliseconds()).Err(); err != nil {
		return fmt.Errorf("redisstore: client %q: ack: redis: %w", client, err)
	}
	return nil
}

// Acks implements rotation.Acker: the acks of client that have not
// expired by Redis's clock; expired ones are deleted.
func (s *Store) Acks(ctx context.Context, client string) (map[string]rotation.Ack, error) {
	if err := checkClient(client); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	key := s.AckKey(client)
	flat, err := acksScript.Run(ctx, s.rdb, []string{key}).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("redisstore: client %q: acks: redis: %w", client, err)
	}
	out := make(map[string]rotation.Ack, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		a, err := parseAck(flat[i+1])
		if err != nil {
			return nil, fmt.Errorf("redisstore: client %q: acks: %s field %q: %w", client, key, flat[i], err)
		}
		out[flat[i]] = a
	}
	return out, nil
}

// parseAck parses "<expires ms> <at ms> <kid>".
func parseAck(v string) (rotation.Ack, error) {
	f := strings.SplitN(v, " ", 3)
	if len(f) != 3 || f[2] == "" {
		return rotation.Ack{}, fmt.Errorf("not an ack: %d fields", len(f))
	}
	exp, err1 := strconv.ParseInt(f[0], 10, 64)
	at, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		return rotation.Ack{}, fmt.Errorf("not an ack: bad times")
	}
	return rotation.Ack{KID: f[2], At: time.UnixMilli(at), Expires: time.UnixMilli(exp)}, nil
}

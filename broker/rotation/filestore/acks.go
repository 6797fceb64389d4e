package filestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
)

var _ rotation.Acker = (*Store)(nil)

// ackFile is the on-disk form of an ack: the client and replica it belongs
// to (a file copied or renamed to another's name is refused), the kid and
// the times, by the clock of the host.
type ackFile struct {
	Client  string    `json:"client"`
	Replica string    `json:"replica"`
	KID     string    `json:"kid"`
	At      time.Time `json:"at"`
	Expires time.Time `json:"expires"`
}

// maxAck bounds the size of an ack file that Acks reads.
const maxAck = 4096

// ackPrefix is how the names of client base's ack files start; each ends
// with the replica's encoded id (no ".") and ackSuffix.
func ackPrefix(base string) string { return base + ".rotation.ack-" }

const ackSuffix = ".json"

// replicaName is the replica id as it goes into a file name: like a client
// name, with "." percent-encoded too, so that an ack file's name ends in a
// part without "." and never equals another client's files.
func replicaName(replica string) (string, error) {
	if err := rotation.CheckReplicaID(replica); err != nil {
		return "", err
	}
	var b strings.Builder
	for i := range len(replica) {
		c := replica[i]
		if 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String(), nil
}

// Ack implements rotation.Acker: it replaces
// <dir>/<client>.rotation.ack-<replica>.json (mode 0600, written whole)
// with kid and the time by this host's clock.
func (s *Store) Ack(ctx context.Context, client, replica, kid string, ttl time.Duration) error {
	base, err := fileName(client)
	if err != nil {
		return err
	}
	rname, err := replicaName(replica)
	if err != nil {
		return err
	}
	if ttl < time.Millisecond {
		return fmt.Errorf("filestore: client %q: ack: ttl %v: want at least 1ms", client, ttl)
	}
	if kid == "" {
		return fmt.Errorf("filestore: client %q: ack: empty kid", client)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("filestore: client %q: ack: %w", client, err)
	}
	now := s.now()
	b, err := json.Marshal(ackFile{Client: client, Replica: replica, KID: kid, At: now, Expires: now.Add(ttl)})
	if err != nil {
		return fmt.Errorf("filestore: client %q: ack: %w", client, err)
	}
	if err := writeFile(s.dir, ackPrefix(base)+rname+ackSuffix, b); err != nil {
		return fmt.Errorf("filestore: client %q: ack: %w", client, err)
	}
	return nil
}

// Acks implements rotation.Acker: the client's ack files whose expiry is
// after now by this host's clock. A file expired for longer than its ttl
// is removed. An ack file that is not the broker's (see Load) or names
// another client or replica is an error.
func (s *Store) Acks(ctx context.Context, client string) (map[string]rotation.Ack, error) {
	base, err := fileName(client)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("filestore: client %q: acks: %w", client, err)
	}
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("filestore: client %q: acks: %w", client, err)
	}
	now := s.now()
	out := map[string]rotation.Ack{}
	prefix := ackPrefix(base)
	for _, e := range entries {
		name := e.Name()
		rname, ok := strings.CutPrefix(name, prefix)
		if !ok {
			continue
		}
		if rname, ok = strings.CutSuffix(rname, ackSuffix); !ok || rname == "" || strings.Contains(rname, ".") {
			continue // another client's (its name goes on with ".") or not an ack
		}
		a, err := readAck(filepath.Join(s.dir, name))
		if errors.Is(err, os.ErrNotExist) {
			continue // removed since the listing
		}
		if err != nil {
			return nil, fmt.Errorf("filestore: client %q: acks: %w", client, err)
		}
		if want, err := replicaName(a.Replica); a.Client != client || err != nil || want != rname {
			return nil, fmt.Errorf("filestore: client %q: acks: %s holds the ack of client %q, replica %q", client, name, a.Client, a.Replica)
		}
		if !now.Before(a.Expires) {
			if now.Sub(a.Expires) > a.Expires.Sub(a.At) {
				_ = os.Remove(filepath.Join(s.dir, name))
			}
			continue
		}
		out[a.Replica] = rotation.Ack{KID: a.KID, At: a.At, Expires: a.Expires}
	}
	return out, nil
}

func readAck(path string) (ackFile, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return ackFile{}, err
	}
	defer f.Close()
	if err := checkFile(f); err != nil {
		return ackFile{}, fmt.Errorf("%s: %w", path, err)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxAck+1))
	if err != nil {
		return ackFile{}, err
	}
	if len(b) > maxAck {
		return ackFile{}, fmt.Errorf("%s is larger than %d bytes", path, maxAck)
	}
	var a ackFile
	if err := json.Unmarshal(b, &a); err != nil {
		return ackFile{}, fmt.Errorf("%s: %w", path, err)
	}
	if a.KID == "" || a.Expires.IsZero() {
		return ackFile{}, fmt.Errorf("%s: not an ack", path)
	}
	return a, nil
}

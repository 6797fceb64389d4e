package rotation

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
)

// Ack is what one replica says of a rotating client: the kid its key ring
// signs with now.
type Ack struct {
	// KID is the active kid the replica signs the client's grants with.
	KID string
	// At is when the replica acked; Expires when the ack stops counting
	// (At plus the ttl the replica gave). Both are by the Store's clock,
	// not the replica's nor the rotator's.
	At, Expires time.Time
}

// Acker is a Store that also keeps each replica's acknowledgement of the
// key it signs with. The rotator looks at the live acks before it removes
// an old key from the registration (the retire step): while a live replica
// acks another kid than the new active one, that replica would lose its
// tokens, so the old key stays. A replica that stopped acking (crashed,
// scaled down, or a version that does not ack) does not hold the rotation
// up once its ack has expired.
//
// Acks hold no secret: a kid, a replica id and times.
type Acker interface {
	// Ack records that replica signs client's grants with kid, for ttl
	// (at least a millisecond); it replaces the replica's earlier ack of
	// that client.
	Ack(ctx context.Context, client, replica, kid string, ttl time.Duration) error
	// Acks returns client's live acks by replica id: those whose ttl has
	// not run out by the Store's clock. Expired ones are left out (and may
	// be removed); no ack at all is an empty map and no error.
	Acks(ctx context.Context, client string) (map[string]Ack, error)
}

// AckFollows is how many follow periods an ack lives: a replica acks on
// every read of the state, so a live one renews its ack several times
// before it expires.
const AckFollows = 4

// AckTTL is the ttl of the acks of a replica that reads the state every
// followEvery (DefaultFollowEvery when zero).
func AckTTL(followEvery time.Duration) time.Duration {
	if followEvery <= 0 {
		followEvery = DefaultFollowEvery
	}
	return AckFollows * followEvery
}

// MaxReplicaID bounds the length of a replica id.
const MaxReplicaID = 128

// CheckReplicaID refuses a replica id that is empty, longer than
// MaxReplicaID bytes, or has other than printable ASCII without spaces
// (ids go into file names, Redis hash fields, logs and status output).
func CheckReplicaID(replica string) error {
	if replica == "" {
		return errors.New("rotation: empty replica id")
	}
	if len(replica) > MaxReplicaID {
		return fmt.Errorf("rotation: replica id %.40q...: longer than %d bytes", replica, MaxReplicaID)
	}
	for _, r := range replica {
		if r > unicode.MaxASCII || !unicode.IsPrint(r) || r == ' ' {
			return fmt.Errorf("rotation: replica id %q: only printable ASCII without spaces", replica)
		}
	}
	return nil
}

// Blocker is a live replica that signs with another key than the active
// one, which keeps the old key registered.
type Blocker struct {
	Replica string `json:"replica"`
	// KID is the kid the replica acked.
	KID string `json:"kid"`
	// Expires is when its ack stops counting, unless renewed.
	Expires time.Time `json:"expires,omitzero"`
}

// Blocking returns the replicas of acks whose kid is not active, by
// replica id.
func Blocking(acks map[string]Ack, active string) []Blocker {
	var out []Blocker
	for r, a := range acks {
		if a.KID != active {
			out = append(out, Blocker{Replica: r, KID: a.KID, Expires: a.Expires})
		}
	}
	slices.SortFunc(out, func(a, b Blocker) int { return strings.Compare(a.Replica, b.Replica) })
	return out
}

// blockMessage says why the old key stays registered.
func blockMessage(blocked []Blocker, old, next string) string {
	var who []string
	for _, b := range blocked {
		who = append(who, fmt.Sprintf("replica %s still signs with %s", b.Replica, b.KID))
	}
	return fmt.Sprintf("%s; %s stays registered until every live replica signs with %s (or a replica's ack expires: it stopped)",
		strings.Join(who, ", "), old, next)
}

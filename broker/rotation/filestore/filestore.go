// Package filestore keeps the rotation State of each client in a file
// next to the keys, for one broker replica, or for replicas that share a
// directory on one host.
//
// In the directory, the client named c has these files, all mode 0600:
//
//	<c>.rotation.json     its State, replaced whole on each Save (written to
//	                      a temp file, synced, renamed over, and the
//	                      directory synced), so that it is never
//	                      half-written
//	<c>.rotation.lock     the lease: flock(LOCK_EX|LOCK_NB) on it, held
//	                      until Release or until the process exits
//	<c>.rotation.ack-<r>.json  the ack of replica r (rotation.Acker): the
//	                      kid it signs with, when it acked and when the ack
//	                      expires by this host's clock; written whole like
//	                      the State; Acks removes one expired for longer
//	                      than its ttl
//
// where <r> is the replica id encoded like <c>, with "." encoded too.
//
// where <c> is the client name with every byte other than a-z, 0-9, "-",
// "_" and a "." that is not the first percent-encoded (%XX, upper-case
// hex): "Demo" is "%44emo", "a/b" is "a%2Fb", ".." is "%2E.". Distinct
// names give distinct files, even on a file system that ignores case, and
// no name leaves the directory. Temp files start with "." and are never a
// client's.
//
// The lease is a flock, so it has no ttl: the ttl given to Lease is
// ignored. A process that crashes or is killed releases its leases as the
// kernel closes its files; a live process keeps its lease until Release.
// flock is reliable on local file systems only: do not share the
// directory over NFS or similar between hosts (use the Redis store).
//
// The Store does not log.
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
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/tokenbroker/tokenbroker/broker/rotation"
)

// maxState bounds the size of a state file that Load reads.
const maxState = 1 << 20

// maxName bounds the encoded client name, so that the file names stay
// below the usual 255-byte limit.
const maxName = 200

// Store keeps rotation States in a directory. It is safe for concurrent
// use.
type Store struct {
	dir string
	now func() time.Time // the clock of acks
}

var _ rotation.Store = (*Store)(nil)

// New returns a Store in dir, which must exist, be a directory owned by
// the broker's user (or root), and not be writable by group or others:
// whoever may write there could point the broker at another key.
func New(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("filestore: no directory")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("filestore: directory %s: %w", dir, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("filestore: directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("filestore: %s is not a directory", abs)
	}
	if perm := st.Mode().Perm(); perm&0o022 != 0 {
		return nil, fmt.Errorf("filestore: directory %s has mode %04o: group and others must not write to it (chmod go-w %s)", abs, perm, abs)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() && sys.Uid != 0 {
		return nil, fmt.Errorf("filestore: directory %s is owned by uid %d, not by the broker's uid %d or root", abs, sys.Uid, os.Geteuid())
	}
	return &Store{dir: abs, now: time.Now}, nil
}

// Dir is the Store's directory, absolute.
func (s *Store) Dir() string { return s.dir }

// file is the on-disk form of a State: the client it belongs to, so that a
// file copied or renamed to another client's name is refused.
type file struct {
	Client string         `json:"client"`
	State  rotation.State `json:"state"`
}

// Load implements rotation.Store: it reads <dir>/<client>.rotation.json,
// the zero State when there is none. A file that is not a regular file
// owned by the broker's user with no group or other write permission, or
// that names another client, is an error.
func (s *Store) Load(ctx context.Context, client string) (rotation.State, error) {
	base, err := fileName(client)
	if err != nil {
		return rotation.State{}, err
	}
	if err := ctx.Err(); err != nil {
		return rotation.State{}, fmt.Errorf("filestore: client %q: load state: %w", client, err)
	}
	path := filepath.Join(s.dir, base+".rotation.json")
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return rotation.State{}, nil
	}
	if err != nil {
		return rotation.State{}, fmt.Errorf("filestore: client %q: load state: %w", client, err)
	}
	defer f.Close()
	if err := checkFile(f); err != nil {
		return rotation.State{}, fmt.Errorf("filestore: client %q: load state: %s: %w", client, path, err)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxState+1))
	if err != nil {
		return rotation.State{}, fmt.Errorf("filestore: client %q: load state: %w", client, err)
	}
	if len(b) > maxState {
		return rotation.State{}, fmt.Errorf("filestore: client %q: load state: %s is larger than %d bytes", client, path, maxState)
	}
	var fl file
	if err := json.Unmarshal(b, &fl); err != nil {
		return rotation.State{}, fmt.Errorf("filestore: client %q: load state: %s: %w", client, path, err)
	}
	if fl.Client != client {
		return rotation.State{}, fmt.Errorf("filestore: client %q: load state: %s holds the state of client %q", client, path, fl.Client)
	}
	return fl.State, nil
}

func checkFile(f *os.File) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return errors.New("not a regular file")
	}
	if perm := st.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("mode %04o lets group or others write it", perm)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() && sys.Uid != 0 {
		return fmt.Errorf("owned by uid %d, not by the broker's uid %d or root", sys.Uid, os.Geteuid())
	}
	return nil
}

// Lease implements rotation.Store: it takes flock(LOCK_EX|LOCK_NB) on
// <dir>/<client>.rotation.lock, or fails with rotation.ErrLeaseHeld while
// another open file (in this or another process) holds it. ttl is ignored:
// the lease lasts until Release or the process's exit.
func (s *Store) Lease(ctx context.Context, client string, _ time.Duration) (rotation.Lease, error) {
	base, err := fileName(client)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("filestore: client %q: lease: %w", client, err)
	}
	path := filepath.Join(s.dir, base+".rotation.lock")
	// A lock file removed between our open and our flock (by hand: the
	// store never removes one) would give a lock nobody else sees: lock,
	// then check that the file is still the one at path, a few times.
	for range 5 {
		f, err := s.lock(client, path)
		if err != nil {
			return nil, err
		}
		now, err := os.Lstat(path)
		if err == nil {
			held, serr := f.Stat()
			if serr == nil && os.SameFile(held, now) {
				return &lease{s: s, client: client, base: base, lock: f}, nil
			}
		}
		f.Close()
	}
	return nil, fmt.Errorf("filestore: client %q: lease: lock file %s keeps being replaced", client, path)
}

// lock opens the lock file at path and flocks it.
func (s *Store) lock(client, path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("filestore: client %q: lease: %w", client, err)
	}
	if err := checkFile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("filestore: client %q: lease: %s: %w", client, path, err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("filestore: client %q: %w", client, rotation.ErrLeaseHeld)
		}
		return nil, fmt.Errorf("filestore: client %q: lease: flock %s: %w", client, path, err)
	}
	return f, nil
}

// lease is a held flock.
type lease struct {
	s      *Store
	client string
	base   string

	mu   sync.Mutex
	lock *os.File // nil once released
}

// Save implements rotation.Lease. It fails with rotation.ErrLeaseLost
// after Release, and when the lock file at the lease's path is no longer
// the file this lease locked (it was removed or replaced, so another may
// have locked the new one).
func (l *lease) Save(ctx context.Context, st rotation.State) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lock == nil {
		return fmt.Errorf("filestore: client %q: save state: released: %w", l.client, rotation.ErrLeaseLost)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("filestore: client %q: save state: %w", l.client, err)
	}
	if err := l.stillHeld(); err != nil {
		return err
	}
	b, err := json.Marshal(file{Client: l.client, State: st})
	if err != nil {
		return fmt.Errorf("filestore: client %q: save state: %w", l.client, err)
	}
	if err := writeFile(l.s.dir, l.base+".rotation.json", b); err != nil {
		return fmt.Errorf("filestore: client %q: save state: %w", l.client, err)
	}
	return nil
}

// stillHeld checks that the lock file at the path is the one locked.
func (l *lease) stillHeld() error {
	path := filepath.Join(l.s.dir, l.base+".rotation.lock")
	held, err := l.lock.Stat()
	if err != nil {
		return fmt.Errorf("filestore: client %q: save state: %w", l.client, err)
	}
	now, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("filestore: client %q: save state: lock file %s was removed: %w", l.client, path, rotation.ErrLeaseLost)
	}
	if err != nil {
		return fmt.Errorf("filestore: client %q: save state: %w", l.client, err)
	}
	if !os.SameFile(held, now) {
		return fmt.Errorf("filestore: client %q: save state: lock file %s was replaced: %w", l.client, path, rotation.ErrLeaseLost)
	}
	return nil
}

// Release implements rotation.Lease: it unlocks and closes the lock file
// (which stays, for the next holder). Releasing again does nothing.
func (l *lease) Release(context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lock == nil {
		return nil
	}
	f := l.lock
	l.lock = nil
	// Closing the only descriptor of the open file drops the flock too;
	// unlocking first makes it explicit.
	uerr := syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	cerr := f.Close()
	if err := errors.Join(uerr, cerr); err != nil {
		return fmt.Errorf("filestore: client %q: release: %w", l.client, err)
	}
	return nil
}

// writeFile replaces dir/name with b: a temp file in dir, written, synced,
// renamed over name, then dir synced; a failure leaves the old file.
func writeFile(dir, name string, b []byte) (err error) {
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*") // mode 0600
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(b); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// fileName is the client name as it starts its file names: see the
// package doc. It refuses the empty name, one that is not UTF-8 (the
// state file repeats the name, in JSON) and one too long for a file name.
func fileName(client string) (string, error) {
	if client == "" {
		return "", errors.New("filestore: empty client name")
	}
	if !utf8.ValidString(client) {
		return "", fmt.Errorf("filestore: client name %q is not valid UTF-8", client)
	}
	var b strings.Builder
	for i := range len(client) {
		c := client[i]
		if 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' && i > 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	if b.Len() > maxName {
		return "", fmt.Errorf("filestore: client name %.40q...: longer than %d bytes as a file name", client, maxName)
	}
	return b.String(), nil
}

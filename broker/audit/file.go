package audit

import (
	"fmt"
	"os"
	"syscall"
)

// OpenFile opens the audit file at path for appending, creating it with
// mode 0600. It refuses a file that others could read or write (any group
// or other permission bit), one owned by another user, a symbolic link
// and anything that is not a regular file: an audit trail names every
// caller and customer, and one that others can edit proves nothing. The
// error says how to fix it; the broker does not change the file's mode on
// its own, since whoever set it may rely on it.
func OpenFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if err := checkFile(path, st); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func checkFile(path string, st os.FileInfo) error {
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s has mode %04o: group and others must have no access (chmod 600 %s)", path, perm, path)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return fmt.Errorf("%s is owned by uid %d, not by the broker's uid %d (chown it, or point audit.sink elsewhere)", path, sys.Uid, os.Geteuid())
	}
	return nil
}

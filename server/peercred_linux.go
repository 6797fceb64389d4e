package server

import (
	"net"
	"syscall"
)

// peerCred reads the credentials of the process at the other end of c.
func peerCred(c *net.UnixConn) (uid, gid, pid uint32, ok bool) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0, 0, false
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || cerr != nil || cred == nil {
		return 0, 0, 0, false
	}
	return cred.Uid, cred.Gid, uint32(cred.Pid), true
}

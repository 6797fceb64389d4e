//go:build !linux

package server

import "net"

// peerCred is not implemented off Linux: unix socket callers then need a
// fallback identity.
func peerCred(*net.UnixConn) (uid, gid, pid uint32, ok bool) { return 0, 0, 0, false }

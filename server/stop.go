package server

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
)

// DefaultStopTimeout is how long a graceful stop waits for open calls.
const DefaultStopTimeout = 10 * time.Second

// GracefulStop is the one way every gRPC server of the binary (the broker's
// and the external signer's) stops: health turns NOT_SERVING (hs may be
// nil), new connections and calls are refused, open calls get up to
// timeout (DefaultStopTimeout when zero) to finish, and then they are cut.
// It returns once g has stopped, reporting whether it had to cut calls.
func GracefulStop(g *grpc.Server, hs *health.Server, timeout time.Duration) (forced bool) {
	if timeout <= 0 {
		timeout = DefaultStopTimeout
	}
	if hs != nil {
		hs.Shutdown()
	}
	stopped := make(chan struct{})
	go func() {
		g.GracefulStop()
		close(stopped)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-stopped:
		return false
	case <-t.C:
		g.Stop()
		<-stopped
		return true
	}
}

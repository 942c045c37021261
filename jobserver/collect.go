package jobserver

import (
	"context"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// awaitPoll bounds how long AwaitFree sleeps in poll(2) before it looks at
// its context again.
const awaitPoll = 100 * time.Millisecond

// AwaitFree returns once a token is free in the FIFO, or with ctx's error.
// The token may be gone again by the time the caller looks.
//
// A client with more work reads a returned token again almost at once, so a
// server that only samples the FIFO now and then rarely sees it. Waiting in
// poll(2) beside the clients wakes the server on the write itself, which is
// how a shrinking budget or a fair share is enforced on a build that keeps
// every token busy. The FIFO must not be closed while AwaitFree runs.
func (f *FIFO) AwaitFree(ctx context.Context) error {
	for ctx.Err() == nil {
		f.mu.Lock()
		fd := f.fd
		f.mu.Unlock()
		if fd < 0 {
			return fmt.Errorf("wait for tokens in %s: %w", f.path, os.ErrClosed)
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		ready, err := unix.Poll(fds, int(awaitPoll.Milliseconds()))
		if err != nil && err != unix.EINTR {
			return fmt.Errorf("wait for tokens in %s: poll: %w", f.path, err)
		}
		if ready > 0 {
			return nil
		}
	}
	return ctx.Err()
}

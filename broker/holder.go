package broker

import "github.com/tokend/tokend/jobserver"

// FIFOHolder keeps the lease FIFOs open in a process other than tokend,
// so that their tokens outlive tokend: the kernel drops a pipe's bytes
// when its last descriptor closes, and while no client has a FIFO open,
// tokend's own descriptor is its last. A kill -9 of tokend then lost the
// free tokens of every lease no client held, and a reader opening the
// FIFO in that window blocked for ever (nobody held a writer).
type FIFOHolder interface {
	// Hold gives the holder fifo, lease id's FIFO, to keep open. It does
	// not wait for the holder: once it returns, the pipe stays open even if
	// tokend dies before the holder has taken it.
	Hold(id string, fifo *jobserver.FIFO) error
	// Release closes it there, before tokend removes the FIFO.
	Release(id string) error
	// PID is the holder's process, whose descriptors are no client's.
	PID() int
}

// hold has the holder keep l's FIFO open, if there is a holder. A FIFO
// the holder cannot take still works while tokend runs; the log says that
// a crash of tokend would lose its free tokens.
func (b *Broker) hold(l *Lease) {
	if b.opts.Holder == nil {
		return
	}
	if err := b.opts.Holder.Hold(l.ID, l.fifo); err != nil {
		b.log.Warn("the fifo holder does not hold this lease's fifo; a crash of tokend loses its free tokens", "lease", l.ID, "error", err)
	}
}

// unhold lets the holder close l's FIFO.
func (b *Broker) unhold(l *Lease) {
	if b.opts.Holder == nil {
		return
	}
	if err := b.opts.Holder.Release(l.ID); err != nil {
		b.log.Warn("cannot release the lease's fifo in the fifo holder", "lease", l.ID, "error", err)
	}
}

// Package broker owns the host's budget of job tokens and the leases that
// share it: one jobserver FIFO per build, fed from the budget, with leaked
// tokens reclaimed and free ones moved to where they are needed. It also
// serves the control API (package api) on a unix socket.
//
// Each active lease already runs one job on its clients' implicit slot, so
// the host runs at most budget jobs when the tokens handed out never exceed
// the budget less the active leases.
package broker

// Package jobserver owns the GNU make jobserver protocol as tokend speaks it:
// the server side of one jobserver FIFO (creating it safely, holding it open,
// adding, taking back and counting tokens), a Collector that takes back the
// tokens clients return before they can read them again, the MAKEFLAGS
// strings that point clients at a jobserver, and a client for Go callers.
//
// A jobserver is a pipe or FIFO holding one byte per free job slot. A client
// reads a byte before starting a job and writes a byte back when the job ends.
// Every client root (a top-level make, ninja or cargo) also owns one implicit
// slot that is never in the pipe, so a build holding N tokens runs N+1 jobs.
//
// Facts about the real clients (make 4.3 and 4.4, ninja 1.13, cargo) that
// shape this package are measured by its conformance tests.
package jobserver

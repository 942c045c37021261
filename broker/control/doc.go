// Package control owns tokend's memory controller: it sizes the broker's
// budget of jobs from memory headroom and pressure instead of the CPU
// count, so that several large builds run side by side as far as memory
// allows and no further.
//
// Each tick it reads the memory domain (the host, or a v1 or v2 memory
// cgroup) through package memory, samples every lease's processes, and
// keeps an estimate of one job's peak memory per lease and job class
// (compile or link), seeded from a per-name history file. A new job is
// admitted only when headroom, less a reserve and less the growth still to
// come of the jobs already running, covers one more job's expected peak.
// The budget shrinks at once when that fails and grows by one at most
// every growth interval, and only while a lease wants more. Sustained PSI
// pressure lowers it multiplicatively and leaves a soft cap at the working
// set where it appeared. As a last resort, when headroom falls below half
// the reserve and keeps falling, it freezes the youngest lease's cgroup v2
// group (never the oldest) and thaws it once memory has recovered. Nothing
// is ever killed.
//
// The controller steers the budget through broker.Broker.Steer, which an
// operator's or the configuration's fixed budget overrides, and publishes
// what it sees for status through broker.Broker.SetMemory. It also makes
// the cgroup v2 groups tokenctl starts its commands in (Cgroups).
package control

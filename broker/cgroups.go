package broker

// LeaseCgroups makes a cgroup per lease for commands that ask for one
// (tokenctl run), so that a memory controller can freeze a build without
// touching anything else. The broker makes the group when the lease is
// registered and hands the path to the client, which starts its command
// inside; it removes the group when the lease is gone. tokend's memory
// controller implements it (control.Cgroups).
type LeaseCgroups interface {
	// Make creates the cgroup of lease id and returns its directory.
	Make(id string) (string, error)
	// Remove removes a directory Make returned. It never kills: a group
	// still holding processes is removed once they have left.
	Remove(dir string) error
	// Owns tells whether dir is a group Make made: a saved lease naming
	// any other as its own is refused.
	Owns(dir string) bool
}

// removeCgroup removes the cgroup made for l, if one was.
func (b *Broker) removeCgroup(l *Lease) {
	if !l.OwnCgroup || b.opts.Cgroups == nil {
		return
	}
	if err := b.opts.Cgroups.Remove(l.Cgroup); err != nil {
		b.log.Warn("cannot remove the lease's cgroup", "lease", l.ID, "cgroup", l.Cgroup, "error", err)
	}
}

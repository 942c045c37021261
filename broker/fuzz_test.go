package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/atomicfile"
	"github.com/tokend/tokend/internal/buildtest"
	"github.com/tokend/tokend/jobserver"
)

// FuzzLoadState feeds state files to the loader and the per-lease check
// a restarted tokend runs: nothing panics, and every entry the check lets
// through is one tokend could have written (so a forged one cannot name
// files or cgroups outside its own).
func FuzzLoadState(f *testing.F) {
	f.Add([]byte(`{"version":1,"reclaimed_total":0,"inflated_total":0,"leases":[{"id":"0123456789ab","name":"x","created":"2026-01-01T00:00:00Z","owner":{"pid":1,"start":5},"uid":0,"gid":0,"granted":2,"reclaimed":0,"inflated":0,"admitted":true}]}`))
	f.Add([]byte(`{"version":1,"leases":[{"id":"../../etc","name":"x","owner":{"dir":"/"},"uid":65534,"cgroup":"/tmp","own_cgroup":true,"granted":-3}]}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`not json`))
	dir := f.TempDir()
	r, err := openRunDir(filepath.Join(dir, "run"))
	if err != nil {
		f.Fatal(err)
	}
	parent := "/sys/fs/cgroup/tokend"
	owns := func(d string) bool { return filepath.Dir(d) == parent }
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := atomicfile.WriteAt(r.dir, stateFile, data, atomicfile.CrashOfWriter); err != nil {
			t.Fatal(err)
		}
		st, err := loadState(r)
		if err != nil {
			return
		}
		if st.OperatorBudget < 0 || st.OperatorBudget > jobserver.MaxTokens || st.ReclaimedTotal < 0 || st.InflatedTotal < 0 {
			t.Fatalf("accepted totals out of range: %+v", st)
		}
		for _, l := range st.Leases {
			if l.check(owns) != nil {
				continue
			}
			if !leaseIDPattern.MatchString(l.ID) || checkName(l.Name) != nil || l.Granted < 0 || l.Granted > jobserver.MaxTokens {
				t.Fatalf("check let through %+v", l)
			}
			if l.OwnCgroup && (filepath.Dir(l.Cgroup) != parent || filepath.Base(l.Cgroup) != l.ID) {
				t.Fatalf("check let through a foreign own cgroup %q", l.Cgroup)
			}
			if l.UID != 0 && (l.Owner.Dir != "" || (l.Cgroup != "" && !l.OwnCgroup)) {
				t.Fatalf("check let a user's lease own a directory or name a cgroup: %+v", l)
			}
		}
	})
}

// FuzzRegisterRequest sends request bodies to the register handler as a
// member of the lease group: the answer is always 201 or a 4xx with an
// error body, and a lease is made only as the rules allow.
func FuzzRegisterRequest(f *testing.F) {
	f.Add([]byte(`{"name":"x","owner_pid":1}`))
	f.Add([]byte(`{"name":"x","owner_dir":"/","new_cgroup":true}`))
	f.Add([]byte(`{"name":"\u001b[2J","owner_pid":1,"gid":0}`))
	f.Add([]byte(`{"name":"x","owner_pid":NaN}`))
	f.Add([]byte(`{"name":"x","cgroup":"/sys/fs/cgroup","wait":true,"gate":true}`))
	b, err := New(Options{RuntimeDir: filepath.Join(f.TempDir(), "run"), Budget: 4})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { b.shutdown() })
	srv, err := NewServer(b, "nogroup", hclog.NewNullLogger())
	if err != nil {
		f.Fatal(err)
	}
	member := peer{uid: buildtest.Nobody, gid: buildtest.Nobody, pid: 1}
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest(http.MethodPost, api.PathLeases, bytes.NewReader(body))
		req = req.WithContext(context.WithValue(req.Context(), peerKey{}, member))
		w := httptest.NewRecorder()
		srv.register(w, req)
		switch {
		case w.Code == http.StatusCreated:
			var reg api.Registered
			if err := json.Unmarshal(w.Body.Bytes(), &reg); err != nil || checkName(reg.Name) != nil {
				t.Fatalf("created %q from %q", w.Body.String(), body)
			}
			l, err := b.Lease(reg.ID)
			if err != nil || l.UID != buildtest.Nobody || l.Owner.Dir != "" || (l.Cgroup != "" && !l.OwnCgroup) {
				t.Fatalf("a member got lease %+v from %q", l, body)
			}
			b.End(buildtest.Nobody, reg.ID, "fuzz")
		case w.Code >= 400 && w.Code < 500:
			var e api.Error
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
				t.Fatalf("%d without an error body: %q", w.Code, w.Body.String())
			}
		default:
			t.Fatalf("status %d for %q: %s", w.Code, body, w.Body.String())
		}
	})
}

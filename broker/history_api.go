package broker

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/tokend/tokend/api"
)

// JobHistory is what tokend learned of past leases, which the API lists
// and root may prune: the memory controller's history, kept in its own
// package, behind the one seam the broker needs.
type JobHistory interface {
	Entries() []api.HistoryEntry
	// Forget forgets name for uid, or for every user when uid is nil,
	// and says how many entries went.
	Forget(name string, uid *int) int
}

// ServeHistory serves h at api.PathHistory; call it before Serve.
func (s *Server) ServeHistory(h JobHistory) {
	s.mux.HandleFunc("GET "+api.PathHistory, func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, h.Entries())
	})
	s.mux.HandleFunc("DELETE "+api.PathHistory+"/{name}", func(w http.ResponseWriter, r *http.Request) {
		p := r.Context().Value(peerKey{}).(peer)
		if p.uid != 0 {
			fail(w, http.StatusForbidden, fmt.Errorf("uid %d may not forget job history: only root may", p.uid))
			return
		}
		var uid *int
		if v := r.URL.Query().Get("uid"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				fail(w, http.StatusBadRequest, fmt.Errorf("uid=%q: want a user id", v))
				return
			}
			uid = &n
		}
		name := r.PathValue("name")
		n := h.Forget(name, uid)
		if n == 0 {
			fail(w, http.StatusNotFound, fmt.Errorf("the job history has no entry named %q%s", name, forWhom(uid)))
			return
		}
		s.log.Info("job history forgotten by operator", "name", name, "entries", n, "uid", p.uid, "pid", p.pid)
		reply(w, http.StatusOK, api.Forgotten{Entries: n})
	})
}

func forWhom(uid *int) string {
	if uid == nil {
		return ""
	}
	return fmt.Sprintf(" for uid %d", *uid)
}

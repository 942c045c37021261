package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/user"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tokend/tokend/api"
)

// maxRequestBody bounds what a client may send; every request fits in a
// few hundred bytes.
const maxRequestBody = 64 << 10

// Server serves the broker's control API on a unix socket. Who may do what
// is decided from the peer's credentials (SO_PEERCRED), never from
// anything the client says: anyone may read status, root or members of the
// lease group may register and end leases, only root may set the budget.
type Server struct {
	broker *Broker
	log    hclog.Logger
	// LeaseGID is the group whose members may register leases; -1 for
	// root only.
	leaseGID int
	mux      *http.ServeMux
	http     *http.Server
}

// NewServer makes the API for b. leaseGroup names the group whose members
// may register leases ("" for root only).
func NewServer(b *Broker, leaseGroup string, log hclog.Logger) (*Server, error) {
	s := &Server{broker: b, log: log, leaseGID: -1}
	if leaseGroup != "" {
		g, err := user.LookupGroup(leaseGroup)
		if err != nil {
			return nil, fmt.Errorf("lease group %q: %w; create it or change lease_group", leaseGroup, err)
		}
		s.leaseGID, _ = strconv.Atoi(g.Gid)
	}
	mux := http.NewServeMux()
	s.mux = mux
	mux.HandleFunc("GET "+api.PathStatus, s.status)
	mux.HandleFunc("POST "+api.PathLeases, s.register)
	mux.HandleFunc("GET "+api.PathLeases+"/{id}", s.lease)
	mux.HandleFunc("DELETE "+api.PathLeases+"/{id}", s.end)
	mux.HandleFunc("PUT "+api.PathBudget, s.setBudget)
	mux.HandleFunc("GET "+api.PathEvents, s.events)
	mux.Handle("GET /metrics", b.MetricsHandler())
	s.http = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 2 * time.Second,
		ReadTimeout:       5 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       30 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, peerOf(c))
		},
		ErrorLog: log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
	return s, nil
}

// Serve answers requests on l until Shutdown.
func (s *Server) Serve(l net.Listener) error {
	err := s.http.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting requests and waits for those under way.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }

func (s *Server) mayLease(p peer) bool {
	if p.uid == 0 {
		return true
	}
	if s.leaseGID < 0 || p.uid < 0 {
		return false
	}
	if p.gid == s.leaseGID {
		return true
	}
	u, err := user.LookupId(strconv.Itoa(p.uid))
	if err != nil {
		return false
	}
	groups, err := u.GroupIds()
	if err != nil {
		return false
	}
	for _, g := range groups {
		if g == strconv.Itoa(s.leaseGID) {
			return true
		}
	}
	return false
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	reply(w, http.StatusOK, s.broker.Status())
}

// admissionWait bounds how long GET /v1/leases/{id}?wait=admission holds a
// request, well inside the server's write timeout and clients' patience.
const admissionWait = 2 * time.Second

func (s *Server) lease(w http.ResponseWriter, r *http.Request) {
	var l api.LeaseStatus
	var err error
	switch wait := r.URL.Query().Get("wait"); wait {
	case "":
		l, err = s.broker.Lease(r.PathValue("id"))
	case "admission":
		ctx, cancel := context.WithTimeout(r.Context(), admissionWait)
		l, err = s.broker.AwaitAdmission(ctx, r.PathValue("id"))
		cancel()
	default:
		fail(w, http.StatusBadRequest, fmt.Errorf("wait=%q: the only thing to wait for is admission", wait))
		return
	}
	if err != nil {
		fail(w, http.StatusNotFound, err)
		return
	}
	reply(w, http.StatusOK, l)
}

func (s *Server) register(w http.ResponseWriter, r *http.Request) {
	p := r.Context().Value(peerKey{}).(peer)
	if !s.mayLease(p) {
		fail(w, http.StatusForbidden, fmt.Errorf("uid %d may not register leases: run as root or as a member of tokend's lease_group", p.uid))
		return
	}
	var req api.RegisterRequest
	if !decode(w, r, &req) {
		return
	}
	gid := p.gid
	if req.GID != nil {
		if p.uid != 0 && *req.GID != p.gid {
			fail(w, http.StatusForbidden, fmt.Errorf("only root may give a lease's fifo to another group than its own (%d)", p.gid))
			return
		}
		gid = *req.GID
	}
	l, err := s.broker.Register(LeaseRequest{
		Name: req.Name, Owner: api.Owner{PID: req.OwnerPID, Dir: req.OwnerDir},
		UID: p.uid, GID: gid, Features: req.Features, Wait: req.Wait,
		NewCgroup: req.NewCgroup, Cgroup: req.Cgroup, Gate: req.Gate,
	})
	if err != nil {
		fail(w, errorStatus(err), err)
		return
	}
	out := api.Registered{ID: l.ID, Name: l.Name, FIFO: l.fifo.Path(), Cgroup: l.Cgroup, OOMScoreAdj: s.broker.opts.OOMScoreAdj}
	if l.gate != nil {
		out.Gate = l.gate.path
	}
	reply(w, http.StatusCreated, out)
}

func (s *Server) end(w http.ResponseWriter, r *http.Request) {
	p := r.Context().Value(peerKey{}).(peer)
	if !s.mayLease(p) {
		fail(w, http.StatusForbidden, fmt.Errorf("uid %d may not end leases: run as root or as a member of tokend's lease_group", p.uid))
		return
	}
	if err := s.broker.End(p.uid, r.PathValue("id"), fmt.Sprintf("ended by uid %d", p.uid)); err != nil {
		fail(w, errorStatus(err), err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) setBudget(w http.ResponseWriter, r *http.Request) {
	p := r.Context().Value(peerKey{}).(peer)
	if p.uid != 0 {
		fail(w, http.StatusForbidden, fmt.Errorf("uid %d may not set the budget: only root may", p.uid))
		return
	}
	var req api.BudgetRequest
	if !decode(w, r, &req) {
		return
	}
	if req.Tokens == nil {
		fail(w, http.StatusBadRequest, errors.New(`budget request needs "tokens"`))
		return
	}
	if err := s.broker.SetBudget(*req.Tokens); err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	s.log.Info("budget set by operator", "tokens", *req.Tokens, "uid", p.uid, "pid", p.pid)
	reply(w, http.StatusOK, s.broker.Status())
}

// decode reads a bounded JSON body with no unknown fields, answering 400
// itself when it cannot.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		fail(w, http.StatusBadRequest, fmt.Errorf("malformed request body: %w", err))
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		fail(w, http.StatusBadRequest, errors.New("malformed request body: more than one JSON value"))
		return false
	}
	return true
}

// errorStatus is the HTTP status of a refused request.
func errorStatus(err error) int {
	switch {
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, ErrQuota):
		return http.StatusTooManyRequests
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	}
	return http.StatusBadRequest
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, code int, err error) {
	reply(w, code, api.Error{Error: err.Error()})
}

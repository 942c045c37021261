package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrUnreachable means nothing answered on the socket: tokend is not
// running, or runs elsewhere.
var ErrUnreachable = errors.New("tokend is not reachable")

// Client speaks the control API: HTTP/1.0 on the unix socket, one
// connection per call, every call bounded by its context. It is neither
// net/http's client nor package net's dialer, because the nix hook, which
// Nix runs synchronously before every build, links this client: net/http
// brings TLS, HTTP/2 and a proxy resolver (a hook of 9 MB), and package
// net links the C library for its resolver wherever cgo is on, which costs
// the dynamic loader and cgo's start on every exec. An HTTP/1.0 exchange is
// a few lines each way, and the answer ends when tokend closes the
// connection.
type Client struct {
	socket string
}

// NewClient returns a client for the socket at path.
func NewClient(socket string) *Client { return &Client{socket: socket} }

// Status fetches the broker's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.do(ctx, "GET", PathStatus, nil, &s)
	return s, err
}

// Register asks for a lease.
func (c *Client) Register(ctx context.Context, req RegisterRequest) (Registered, error) {
	var r Registered
	err := c.do(ctx, "POST", PathLeases, req, &r)
	return r, err
}

// AwaitAdmission waits, up to a couple of seconds per call, until the lease
// is admitted, and returns it as it then is: admitted, or still waiting.
func (c *Client) AwaitAdmission(ctx context.Context, id string) (LeaseStatus, error) {
	var l LeaseStatus
	err := c.do(ctx, "GET", PathLeases+"/"+id+"?wait=admission", nil, &l)
	return l, err
}

// Events returns the events after the one numbered after; tokend holds
// the request a couple of seconds when there is none yet. After 0 asks for
// every event tokend still keeps.
func (c *Client) Events(ctx context.Context, after uint64) (Events, error) {
	var e Events
	err := c.do(ctx, "GET", PathEvents+"?after="+strconv.FormatUint(after, 10), nil, &e)
	return e, err
}

// End ends a lease.
func (c *Client) End(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", PathLeases+"/"+id, nil, nil)
}

// SetBudget pins the budget; zero hands it back to tokend.
func (c *Client) SetBudget(ctx context.Context, tokens int) (Status, error) {
	var s Status
	err := c.do(ctx, "PUT", PathBudget, BudgetRequest{Tokens: &tokens}, &s)
	return s, err
}

// maxAnswer bounds what a call reads: a status of a few thousand leases.
const maxAnswer = 16 << 20

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
	}
	conn, err := dial(c.socket)
	if err != nil {
		return fmt.Errorf("%w at %s (start it, or point TOKEND_SOCKET at its socket): %w", ErrUnreachable, c.socket, err)
	}
	defer conn.Close()
	// The context bounds the exchange: its deadline is the connection's,
	// and ending it ends the exchange at once.
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	status, answer, err := exchange(conn, method, path, body)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			err = ctx.Err()
		case errors.Is(err, os.ErrDeadlineExceeded):
			// The connection's deadline is the context's, which may be
			// seen to pass a moment later.
			err = context.DeadlineExceeded
		}
		return fmt.Errorf("%s %s on %s: %w", method, path, c.socket, err)
	}
	if status.code >= 300 {
		var e Error
		if json.Unmarshal(answer, &e) == nil && e.Error != "" {
			return fmt.Errorf("tokend refused %s %s (%s): %s", method, path, status.text, e.Error)
		}
		return fmt.Errorf("tokend refused %s %s: %s", method, path, status.text)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(answer, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// status is an answer's status line: its code, and the code with its
// reason ("404 Not Found").
type status struct {
	code int
	text string
}

// dial connects to the unix socket at path. The socket is non-blocking, as
// package net makes them, so connect(2) never waits for tokend to accept:
// it fails at once with EAGAIN when tokend's backlog is full.
func dial(path string) (*os.File, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	addr := &syscall.SockaddrUnix{Name: path}
	for {
		err = syscall.Connect(fd, addr)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil && err != syscall.EISCONN {
		syscall.Close(fd)
		return nil, fmt.Errorf("connect to %s: %w", path, os.NewSyscallError("connect", err))
	}
	// A non-blocking descriptor joins the runtime's poller, so reads and
	// writes honour deadlines.
	return os.NewFile(uintptr(fd), path), nil
}

// exchange sends one HTTP/1.0 request on conn and reads the whole answer.
func exchange(conn *os.File, method, path string, body []byte) (status, []byte, error) {
	req := method + " " + path + " HTTP/1.0\r\nHost: tokend\r\n"
	if body != nil {
		req += "Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n"
	}
	if _, err := conn.Write(append([]byte(req+"\r\n"), body...)); err != nil {
		return status{}, nil, err
	}
	raw, err := io.ReadAll(io.LimitReader(conn, maxAnswer+1))
	if err != nil {
		return status{}, nil, fmt.Errorf("read answer: %w", err)
	}
	if len(raw) > maxAnswer {
		return status{}, nil, fmt.Errorf("answer larger than %d bytes", maxAnswer)
	}
	return parseAnswer(raw)
}

// parseAnswer splits an HTTP/1.x answer into its status and its body,
// checking the body against Content-Length when the answer gives one.
func parseAnswer(raw []byte) (status, []byte, error) {
	head, body, ok := bytes.Cut(raw, []byte("\r\n\r\n"))
	if !ok {
		return status{}, nil, fmt.Errorf("answer cut short after %d bytes", len(raw))
	}
	lines := strings.Split(string(head), "\r\n")
	proto, text, _ := strings.Cut(lines[0], " ")
	code, err := strconv.Atoi(strings.SplitN(text, " ", 2)[0])
	if !strings.HasPrefix(proto, "HTTP/1.") || err != nil || code < 100 || code > 999 {
		return status{}, nil, fmt.Errorf("not an HTTP answer: %.40q", lines[0])
	}
	for _, line := range lines[1:] {
		name, value, _ := strings.Cut(line, ":")
		value = strings.TrimSpace(value)
		switch strings.ToLower(name) {
		case "content-length":
			n, err := strconv.Atoi(value)
			if err != nil || n != len(body) {
				return status{}, nil, fmt.Errorf("answer of %d bytes where it says Content-Length %s", len(body), value)
			}
		case "transfer-encoding":
			return status{}, nil, fmt.Errorf("answer with Transfer-Encoding %s to an HTTP/1.0 request", value)
		}
	}
	return status{code: code, text: text}, body, nil
}

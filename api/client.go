package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
)

// ErrUnreachable means nothing answered on the socket: tokend is not
// running, or runs elsewhere.
var ErrUnreachable = errors.New("tokend is not reachable")

// Client speaks the control API. Every call is bounded by its context.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(socket string) *Client {
	return &Client{
		socket: socket,
		http: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
		}},
	}
}

// Status fetches the broker's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.do(ctx, http.MethodGet, PathStatus, nil, &s)
	return s, err
}

// Register asks for a lease.
func (c *Client) Register(ctx context.Context, req RegisterRequest) (Registered, error) {
	var r Registered
	err := c.do(ctx, http.MethodPost, PathLeases, req, &r)
	return r, err
}

// AwaitAdmission waits, up to a couple of seconds per call, until the lease
// is admitted, and returns it as it then is: admitted, or still waiting.
func (c *Client) AwaitAdmission(ctx context.Context, id string) (LeaseStatus, error) {
	var l LeaseStatus
	err := c.do(ctx, http.MethodGet, PathLeases+"/"+id+"?wait=admission", nil, &l)
	return l, err
}

// Events returns the events after the one numbered after; tokend holds
// the request a couple of seconds when there is none yet. After 0 asks for
// every event tokend still keeps.
func (c *Client) Events(ctx context.Context, after uint64) (Events, error) {
	var e Events
	err := c.do(ctx, http.MethodGet, PathEvents+"?after="+strconv.FormatUint(after, 10), nil, &e)
	return e, err
}

// End ends a lease.
func (c *Client) End(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, PathLeases+"/"+id, nil, nil)
}

// SetBudget pins the budget; zero hands it back to tokend.
func (c *Client) SetBudget(ctx context.Context, tokens int) (Status, error) {
	var s Status
	err := c.do(ctx, http.MethodPut, PathBudget, BudgetRequest{Tokens: &tokens}, &s)
	return s, err
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://tokend"+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return fmt.Errorf("%w at %s (start it, or point TOKEND_SOCKET at its socket): %w", ErrUnreachable, c.socket, err)
		}
		return fmt.Errorf("%s %s on %s: %w", method, path, c.socket, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var e Error
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			return fmt.Errorf("tokend refused %s %s (%s): %s", method, path, resp.Status, e.Error)
		}
		return fmt.Errorf("tokend refused %s %s: %s", method, path, resp.Status)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

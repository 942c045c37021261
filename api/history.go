package api

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// PathHistory is the job history: GET lists it (anyone), DELETE
// PathHistory/{name} forgets a name (root only), for every user unless
// ?uid=N names one.
const PathHistory = "/v1/history"

// HistoryEntry is what tokend learned of one user's leases of one name:
// what the next such lease's jobs are expected to peak at.
type HistoryEntry struct {
	UID  int    `json:"uid"`
	Name string `json:"name"`
	// Compile and Link are the estimates per job class in bytes; 0 when
	// no run showed a job of the class.
	Compile uint64 `json:"compile,omitempty"`
	Link    uint64 `json:"link,omitempty"`
	// Runs counts the leases that ended with something learned.
	Runs     int       `json:"runs"`
	OOMKills int       `json:"oom_kills"`
	LastSeen time.Time `json:"last_seen"`
}

// Forgotten is the answer to DELETE PathHistory/{name}.
type Forgotten struct {
	// Entries is how many users' entries of the name were forgotten.
	Entries int `json:"entries"`
}

// History lists the job history, by user and name.
func (c *Client) History(ctx context.Context) ([]HistoryEntry, error) {
	var h []HistoryEntry
	err := c.do(ctx, http.MethodGet, PathHistory, nil, &h)
	return h, err
}

// Forget forgets what tokend learned of leases of name: of uid's, or of
// every user's when uid is nil.
func (c *Client) Forget(ctx context.Context, name string, uid *int) (Forgotten, error) {
	path := PathHistory + "/" + url.PathEscape(name)
	if uid != nil {
		path += "?uid=" + strconv.Itoa(*uid)
	}
	var f Forgotten
	err := c.do(ctx, http.MethodDelete, path, nil, &f)
	return f, err
}

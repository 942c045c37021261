package main

import (
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
)

// A lease name with a terminal escape and a carriage return forged a row
// of tokenctl status; it is shown quoted instead.
func TestStatusEscapesNames(t *testing.T) {
	now := time.Now()
	st := api.Status{Budget: 4, Leases: []api.LeaseStatus{{
		Registration: api.Registration{ID: "0123456789ab", Name: "x\x1b[2K\rroot-build  4  4  0", Created: now},
		Ending:       true, EndReason: "owner directory /tmp/\x1b]0;pwned\a removed",
	}}}
	var out strings.Builder
	if err := printStatus(&out, st, now); err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(out.String(), "\x1b\r\a") {
		t.Errorf("status carries control characters through:\n%q", out.String())
	}
	if !strings.Contains(out.String(), `"x\x1b[2K\rroot-build  4  4  0"`) {
		t.Errorf("status does not show the name quoted:\n%s", out.String())
	}
}

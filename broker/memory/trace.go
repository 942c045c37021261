package memory

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Snapshot is one step of a recorded trace: a domain's reading and the
// processes in it at that moment. Traces are JSON Lines of Snapshots, so
// controller tests can replay a real workload without running it.
type Snapshot struct {
	Reading Reading `json:"reading"`
	Procs   []Proc  `json:"procs"`
}

// ReadTrace decodes a trace. Recorded times are wall-clock (JSON has no
// monotonic clock), which is good enough for the seconds a trace spans.
func ReadTrace(r io.Reader) ([]Snapshot, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var trace []Snapshot
	for {
		var s Snapshot
		err := dec.Decode(&s)
		if errors.Is(err, io.EOF) {
			return trace, nil
		}
		if err != nil {
			return nil, fmt.Errorf("memory: trace snapshot %d: %w (re-record with go run ./broker/memory/internal/record)", len(trace)+1, err)
		}
		trace = append(trace, s)
	}
}

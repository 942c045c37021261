package api

import "time"

// PathEvents is GET /v1/events?after=SEQ: the decisions tokend made after
// the event numbered SEQ, waiting a couple of seconds for one when there
// is none yet, so a client that asks again at once sees each decision as
// it happens (tokenctl events, tokenctl top).
const PathEvents = "/v1/events"

// Event kinds.
const (
	// EventBudget: the budget changed, From → Budget, for Reason.
	EventBudget = "budget"
	// EventDecision: the memory controller changed what it wants (Budget,
	// for Reason, with Detail's arithmetic). FixedBy names who pins the
	// budget when it does not take effect: then Budget is what memory
	// would allow.
	EventDecision = "decision"
	// EventStart and EventEnd: a lease began, or ended for Reason.
	EventStart = "start"
	EventEnd   = "end"
	// EventAdmit: a waiting lease was admitted after Wait.
	EventAdmit = "admit"
	// EventFreeze and EventThaw: the memory brake froze or thawed a lease
	// (Detail says why).
	EventFreeze = "freeze"
	EventThaw   = "thaw"
	// EventReclaim: Tokens that a lease's dead clients held were written
	// off and put back in the budget.
	EventReclaim = "reclaim"
	// EventTrim: a lease's FIFO held Tokens more than it was granted, and
	// tokend took them out.
	EventTrim = "trim"
	// EventOOMKill: the kernel's OOM killer killed Kills of a lease's
	// jobs. Whoever watches for OOM kills records it (Broker.Record);
	// the metrics count it.
	EventOOMKill = "oom-kill"
	// EventOverShare: a lease has held Tokens more than its share for Wait
	// (the share grace) while other leases waited (Detail names them).
	EventOverShare = "over-share"
	// EventReissue: a lease above its share held Tokens beyond the jobs
	// it ran for Wait (the share grace) while others waited; tokend wrote
	// them off and hands them to the waiting leases.
	EventReissue = "reissue"
)

// Event is one decision of tokend's, or one thing it saw happen.
type Event struct {
	// Seq numbers events from 1 in the order tokend made them, since it
	// started.
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	Kind string    `json:"kind"`
	// Lease and Name are the lease the event is about, if any.
	Lease   string        `json:"lease,omitempty"`
	Name    string        `json:"name,omitempty"`
	Budget  int           `json:"budget,omitempty"`
	From    int           `json:"from,omitempty"`
	Reason  string        `json:"reason,omitempty"`
	FixedBy string        `json:"fixed_by,omitempty"`
	Tokens  int           `json:"tokens,omitempty"`
	Kills   int           `json:"kills,omitempty"`
	Wait    time.Duration `json:"wait_ns,omitempty"`
	Detail  string        `json:"detail,omitempty"`
}

// Events is the answer to GET /v1/events.
type Events struct {
	Events []Event `json:"events"`
	// Next is the Seq to ask after next time: the last event's, or the
	// one asked after when there is none.
	Next uint64 `json:"next"`
	// Missed counts events after the one asked after that tokend no
	// longer keeps (it keeps the last few hundred).
	Missed uint64 `json:"missed,omitempty"`
}

package main

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/effectonce/effectonce/idempotency"
)

// hmacKey matches the keys idempotency.KeySpace builds in HMAC mode:
// "<namespace>:v<version>:h:" and the hex HMAC-SHA256. Key parts are named
// with letters, digits and '_', so no plain key has this shape.
var hmacKey = regexp.MustCompile(`^([A-Za-z0-9][A-Za-z0-9._-]*):v[0-9]+:h:[0-9a-f]{64}$`)

// showKey returns the key as the command prints it: an HMAC key as its
// namespace only (as idempotency.Key.LogValue logs it) unless show, every
// other key in full; and whether it was hidden.
func showKey(key string, show bool) (string, bool) {
	if show {
		return key, false
	}
	if m := hmacKey.FindStringSubmatch(key); m != nil {
		return m[1] + ":<hmac>", true
	}
	return key, false
}

// recordView is a record as -o json prints it (the documented shape).
type recordView struct {
	Key          string `json:"key"`
	KeyHidden    bool   `json:"key_hidden,omitempty"`
	Namespace    string `json:"namespace"`
	State        string `json:"state"`
	PrevState    string `json:"prev_state,omitempty"`
	Active       bool   `json:"active"`
	Stuck        bool   `json:"stuck"`
	StuckBecause string `json:"stuck_because,omitempty"`
	Token        int64  `json:"token"`
	Claims       int    `json:"claims"`
	Generation   int    `json:"generation"`
	Fingerprint  string `json:"fingerprint,omitempty"` // hex SHA-256
	// Result is the stored result when it is JSON (the default codec);
	// ResultBase64 holds any other bytes.
	Result         json.RawMessage       `json:"result,omitempty"`
	ResultBase64   string                `json:"result_base64,omitempty"`
	LeaseUntil     *time.Time            `json:"lease_until,omitempty"`
	DueAt          *time.Time            `json:"due_at,omitempty"`
	DedupUntil     *time.Time            `json:"dedup_until,omitempty"`
	FirstClaimedAt time.Time             `json:"first_claimed_at"`
	UpdatedAt      time.Time             `json:"updated_at"`
	AgeSeconds     int64                 `json:"age_seconds"`
	Reason         string                `json:"reason,omitempty"`
	Attempts       []idempotency.Attempt `json:"attempts"`
}

func (l *ledger) view(r idempotency.Record) recordView {
	key, hidden := showKey(r.Key, l.showKeys)
	v := recordView{
		Key: key, KeyHidden: hidden, Namespace: r.Namespace, State: string(r.State), PrevState: string(r.PrevState),
		Active: r.State.Active(), Stuck: idempotency.Stuck(r, l.now), StuckBecause: stuckBecause(r, l.now),
		Token: r.Token, Claims: r.Claims, Generation: r.Generation,
		LeaseUntil: timePtr(r.LeaseUntil), DueAt: timePtr(r.DueAt), DedupUntil: timePtr(r.DedupUntil),
		FirstClaimedAt: r.FirstClaimedAt.UTC(), UpdatedAt: r.UpdatedAt.UTC(),
		AgeSeconds: int64(l.now.Sub(r.FirstClaimedAt) / time.Second),
		Reason:     r.Reason, Attempts: r.Evidence,
	}
	if len(r.Fingerprint) > 0 {
		v.Fingerprint = hex.EncodeToString(r.Fingerprint)
	}
	if len(r.Result) > 0 {
		if json.Valid(r.Result) {
			v.Result = json.RawMessage(r.Result)
		} else {
			v.ResultBase64 = base64.StdEncoding.EncodeToString(r.Result)
		}
	}
	if v.Attempts == nil {
		v.Attempts = []idempotency.Attempt{}
	}
	return v
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

// stuckBecause says why nobody will finish r on their own, or "".
func stuckBecause(r idempotency.Record, now time.Time) string {
	if !idempotency.Stuck(r, now) {
		return ""
	}
	switch r.State {
	case idempotency.StateInDoubt:
		return "in doubt: the provider may have acted; reconcile or settle"
	case idempotency.StateUnknown:
		return "the provider's dedup window ended " + ago(now.Sub(r.DedupUntil)) + ": a retry could act twice"
	}
	return "its holder's lease expired " + ago(now.Sub(r.LeaseUntil))
}

func ago(d time.Duration) string { return age(d) + " ago" }

// age renders a duration for people: 45s, 12m, 3h05m, 4d02h.
func age(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		return strconv.Itoa(int(d/time.Minute)) + "m"
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	}
	return fmt.Sprintf("%dd%02dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
}

// attempts renders the evidence as "3 (unknown x2, not_acted)".
func attempts(ev []idempotency.Attempt) string {
	if len(ev) == 0 {
		return "0"
	}
	var runs []string
	for i := 0; i < len(ev); {
		j := i
		for j < len(ev) && ev[j].Class == ev[i].Class {
			j++
		}
		run := string(ev[i].Class)
		if j-i > 1 {
			run += " x" + strconv.Itoa(j-i)
		}
		runs = append(runs, run)
		i = j
	}
	return strconv.Itoa(len(ev)) + " (" + strings.Join(runs, ", ") + ")"
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// oneLine makes s fit a table cell: control characters become spaces, and
// it is cut at n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.FieldsFunc(s, unicode.IsControl), " ")
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// printable renders a result for text output.
func printable(b []byte) string {
	switch {
	case b == nil:
		return "none"
	case len(b) == 0:
		return "(empty)"
	case utf8.Valid(b) && !strings.ContainsFunc(string(b), func(r rune) bool { return unicode.IsControl(r) && r != '\n' && r != '\t' }):
		return string(b)
	}
	return "base64:" + base64.StdEncoding.EncodeToString(b)
}

func (l *ledger) table() *tabwriter.Writer { return tabwriter.NewWriter(l.out, 0, 0, 2, ' ', 0) }

func (l *ledger) writeJSON(v any) error {
	enc := json.NewEncoder(l.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeRecord prints every field of r, then its evidence, indented.
func (l *ledger) writeRecord(w io.Writer, r idempotency.Record) {
	v := l.view(r)
	state := v.State
	if v.PrevState != "" {
		state += " (was " + v.PrevState + ")"
	}
	fp := "none"
	if v.Fingerprint != "" {
		fp = v.Fingerprint + " (sha256 of the payload)"
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	rows := [][2]string{
		{"key", v.Key},
		{"namespace", v.Namespace},
		{"state", state},
		{"token", strconv.FormatInt(v.Token, 10)},
		{"claims", strconv.Itoa(v.Claims)},
		{"generation", strconv.Itoa(v.Generation)},
		{"fingerprint", fp},
		{"result", printable(r.Result)},
		{"lease until", stamp(r.LeaseUntil)},
		{"due at", stamp(r.DueAt)},
		{"dedup until", stamp(r.DedupUntil)},
		{"first claimed", stamp(r.FirstClaimedAt) + " (" + ago(l.now.Sub(r.FirstClaimedAt)) + ")"},
		{"updated", stamp(r.UpdatedAt) + " (" + ago(l.now.Sub(r.UpdatedAt)) + ")"},
		{"reason", orDash(r.Reason)},
	}
	if v.Stuck {
		rows = append(rows, [2]string{"stuck", v.StuckBecause})
	}
	for _, row := range rows {
		fmt.Fprintf(tw, "  %s\t%s\n", row[0], row[1])
	}
	_ = tw.Flush()
	if len(r.Evidence) == 0 {
		fmt.Fprintln(w, "  attempts: none recorded")
		return
	}
	fmt.Fprintf(w, "  attempts (the last %d kept, oldest first): %s\n", idempotency.MaxEvidence, attempts(r.Evidence))
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "    AT\tGEN\tCLASS\tSTATUS\tREQUEST ID\tREPLAYED\tERROR")
	for _, a := range r.Evidence {
		status := "-"
		if a.Status != 0 {
			status = strconv.Itoa(a.Status)
		}
		replayed := "no"
		if a.Replayed {
			replayed = "yes"
		}
		fmt.Fprintf(tw, "    %s\t%d\t%s\t%s\t%s\t%s\t%s\n", stamp(a.At), a.Generation, a.Class, status,
			orDash(a.RequestID), replayed, orDash(oneLine(a.Error, 200)))
	}
	_ = tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

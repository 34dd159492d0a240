package keyclock

import (
	"fmt"
	"strings"
)

// sumFlow is one summarised flow through a function: the steps a value takes,
// and whether it already went through a key builder (and was reported
// there).
type sumFlow struct {
	Kind  origin // for a result derived from a source: the source's kind
	Param int    // for a parameter's flow: its index, the receiver first
	Path  []string
	Part  string // the tainted part of the result: "r1/" (second result), "f0/" (first field); "" for all
	// Access is, for a parameter's flow, the part of the parameter the
	// function reads: an argument tainted only elsewhere does not flow.
	Access string
	Sunk   bool
}

// summary is what callers need to know about a function. It is exported as
// a fact on the function's object so that importing packages know it too.
type summary struct {
	Result   *sumFlow  // the result derives from a source inside the function
	ToResult []sumFlow // parameters that reach the result, by increasing Param
	ToSink   []sumFlow // parameters that reach a key sink, by increasing Param; Path ends with the sink
}

// flowFact is summary as an analysis fact.
type flowFact summary

func (*flowFact) AFact() {}

func (f *flowFact) String() string { return (*summary)(f).String() }

func (s *summary) empty() bool {
	return s == nil || s.Result == nil && len(s.ToResult) == 0 && len(s.ToSink) == 0
}

// shape identifies a summary up to its paths, for the fixpoint: paths may
// differ between rounds, shapes only grow.
func (s *summary) shape() string {
	if s.empty() {
		return ""
	}
	var b strings.Builder
	if s.Result != nil {
		fmt.Fprintf(&b, "R%v%v%s", s.Result.Kind, s.Result.Sunk, s.Result.Part)
	}
	for _, fl := range s.ToResult {
		fmt.Fprintf(&b, ";r%d%v%s@%s", fl.Param, fl.Sunk, fl.Part, fl.Access)
	}
	for _, fl := range s.ToSink {
		fmt.Fprintf(&b, ";s%d@%s", fl.Param, fl.Access)
	}
	return b.String()
}

// String is the fact's form in analysistest expectations, for example
// `result from the clock: time.Now → .Format; param 0 to sink: idempotency.Str("day")`.
func (s *summary) String() string {
	var parts []string
	if s.Result != nil {
		parts = append(parts, fmt.Sprintf("result%s from %v: %s", partSuffix(s.Result.Part), s.Result.Kind, strings.Join(s.Result.Path, " → ")))
	}
	for _, fl := range s.ToResult {
		parts = append(parts, fmt.Sprintf("param %d%s to result%s", fl.Param, partSuffix(fl.Access), partSuffix(fl.Part)))
	}
	for _, fl := range s.ToSink {
		parts = append(parts, fmt.Sprintf("param %d%s to sink: %s", fl.Param, partSuffix(fl.Access), strings.Join(fl.Path, " → ")))
	}
	return strings.Join(parts, "; ")
}

// headerFact lists the header names a package's httpeffect.Config values
// carry the key in, so that a package importing it checks them too.
type headerFact struct {
	Names []string
}

func (*headerFact) AFact() {}

func (f *headerFact) String() string { return "headers " + strings.Join(f.Names, ",") }

func partSuffix(part string) string {
	if part == "" {
		return ""
	}
	return " " + strings.TrimSuffix(part, "/")
}

// flowOf returns the flow of parameter i in flows.
func flowOf(flows []sumFlow, i int) (sumFlow, bool) {
	for _, fl := range flows {
		if fl.Param == i {
			return fl, true
		}
	}
	return sumFlow{}, false
}

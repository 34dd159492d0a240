package keyclock

import (
	"go/ast"
	"go/constant"
	"go/types"
	"slices"
	"strings"

	"golang.org/x/tools/go/analysis"
	"golang.org/x/tools/go/ssa"
)

// Analyzer reports idempotency keys derived from the clock or from
// randomness; see the package documentation for its sources, sinks, flags
// and limits. It exports facts, so drivers run it over dependencies too.
var Analyzer = &analysis.Analyzer{
	Name:      "keyclock",
	Doc:       "report idempotency keys derived from the clock or from randomness\n\nA key must name a business intent; one built from time.Now, math/rand, crypto/rand or a random UUID changes between deliveries, and the provider performs the effect twice.",
	URL:       "https://pkg.go.dev/github.com/effectonce/effectonce/analysis/keyclock",
	Run:       run,
	FactTypes: []analysis.Fact{new(flowFact), new(headerFact)},
}

var (
	flagHeaders string
	flagSources string
)

func init() {
	Analyzer.Flags.StringVar(&flagHeaders, "headers", "",
		"comma-separated header names that also carry an idempotency key (Idempotency-Key always does)")
	Analyzer.Flags.StringVar(&flagSources, "sources", "",
		"comma-separated functions whose results also count as sources, as importpath.Func or importpath.Type.Method")
}

// checker holds the state of one pass.
type checker struct {
	pass         *analysis.Pass
	headers      []string        // header names that carry a key
	extraSources map[string]bool // from -sources, "path.Func" or "path.Type.Method"
	funcs        []*ssa.Function // the package's functions, parents before closures
	summaries    map[*ssa.Function]*summary
	seeds        map[*ssa.Function]map[int]*trace // closure → tainted captured variables
	ignores      ignores
}

func run(pass *analysis.Pass) (any, error) {
	if standard(pass) {
		// The standard library is described by the catalog; building its
		// SSA on every run of go vet would cost time for nothing.
		return nil, nil
	}
	c := &checker{
		pass:         pass,
		extraSources: map[string]bool{},
		summaries:    map[*ssa.Function]*summary{},
		seeds:        map[*ssa.Function]map[int]*trace{},
	}
	for s := range strings.SplitSeq(flagSources, ",") {
		if s = strings.TrimSpace(s); s != "" {
			c.extraSources[s] = true
		}
	}
	c.funcs = buildSSA(pass)
	c.collectHeaders()

	// Summaries depend on callees' summaries and closures on their
	// parents': iterate until the shapes stop growing.
	for range 8 {
		changed := false
		for _, fn := range c.funcs {
			s := c.summarize(fn)
			if s.shape() != c.summaries[fn].shape() {
				changed = true
			}
			c.summaries[fn] = s
		}
		if !changed {
			break
		}
	}
	for _, fn := range c.funcs {
		if obj, ok := fn.Object().(*types.Func); ok && obj.Pkg() == pass.Pkg && !c.summaries[fn].empty() {
			pass.ExportObjectFact(obj, (*flowFact)(c.summaries[fn]))
		}
	}

	c.ignores = collectIgnores(pass)
	var hits []hit
	for _, fn := range c.funcs {
		f := c.newFlow(fn, -1)
		f.propagate()
		hits = append(hits, f.hits...)
	}
	seen := map[string]bool{}
	for _, h := range hits {
		msg := "idempotency key derived from " + h.kind.String() + ": " + strings.Join(h.path, " → ")
		k := pass.Fset.Position(h.pos).String() + msg
		if seen[k] || c.ignores.suppressed(pass.Fset, h.pos) {
			continue
		}
		seen[k] = true
		pass.Report(analysis.Diagnostic{Pos: h.pos, Message: msg})
	}
	c.ignores.reportMissingReasons(pass)
	return nil, nil
}

// standard reports whether the package belongs to the standard library.
func standard(pass *analysis.Pass) bool {
	path := pass.Pkg.Path()
	first, _, _ := strings.Cut(path, "/")
	if strings.Contains(first, ".") {
		return false
	}
	m := pass.Module
	return m == nil || m.Path == "std" || !(path == m.Path || strings.HasPrefix(path, m.Path+"/"))
}

// buildSSA builds the package's SSA form and returns its functions: the
// declared ones, the package initializer (which holds the initializers of
// package-level variables) and every function literal, each parent before
// its closures.
func buildSSA(pass *analysis.Pass) []*ssa.Function {
	prog := ssa.NewProgram(pass.Fset, 0)
	for _, p := range pass.Pkg.Imports() {
		prog.CreatePackage(p, nil, nil, true)
	}
	pkg := prog.CreatePackage(pass.Pkg, pass.Files, pass.TypesInfo, false)
	pkg.Build()

	var funcs []*ssa.Function
	var add func(fn *ssa.Function)
	add = func(fn *ssa.Function) {
		funcs = append(funcs, fn)
		for _, anon := range fn.AnonFuncs {
			add(anon)
		}
	}
	if init := pkg.Func("init"); init != nil {
		add(init)
	}
	for _, file := range pass.Files {
		for _, decl := range file.Decls {
			if decl, ok := decl.(*ast.FuncDecl); ok {
				if obj, ok := pass.TypesInfo.Defs[decl.Name].(*types.Func); ok {
					if fn := prog.FuncValue(obj); fn != nil {
						add(fn)
					}
				}
			}
		}
	}
	return funcs
}

// collectHeaders gathers the header names that carry a key: the default,
// the -headers flag, the constant HeaderName of every httpeffect.Config
// built in this package, and those of the packages it imports.
func (c *checker) collectHeaders() {
	names := []string{defaultHeader}
	for h := range strings.SplitSeq(flagHeaders, ",") {
		if h = strings.TrimSpace(h); h != "" {
			names = append(names, h)
		}
	}
	for _, pf := range c.pass.AllPackageFacts() {
		if f, ok := pf.Fact.(*headerFact); ok {
			names = append(names, f.Names...)
		}
	}
	var own []string
	for _, fn := range c.funcs {
		for _, b := range fn.Blocks {
			for _, ins := range b.Instrs {
				st, ok := ins.(*ssa.Store)
				if !ok {
					continue
				}
				fa, ok := st.Addr.(*ssa.FieldAddr)
				if !ok {
					continue
				}
				pkg, typ, field, ok := namedField(fa.X.Type(), fa.Field)
				if !ok || pkg != httpeffectPath || typ != "Config" || field != "HeaderName" {
					continue
				}
				if s, ok := constString(st.Val); ok && s != "" && !slices.Contains(own, s) {
					own = append(own, s)
				}
			}
		}
	}
	if len(own) > 0 {
		slices.Sort(own)
		c.pass.ExportPackageFact(&headerFact{Names: own})
	}
	c.headers = append(names, own...)
}

// keyHeader reports whether name carries an idempotency key.
func (c *checker) keyHeader(name string) bool {
	return slices.ContainsFunc(c.headers, func(h string) bool { return strings.EqualFold(h, name) })
}

// summarize computes fn's summary from one run seeded by its sources and
// one run per parameter.
func (c *checker) summarize(fn *ssa.Function) *summary {
	s := &summary{}
	f := c.newFlow(fn, -1)
	f.propagate()
	if f.result != nil {
		s.Result = &sumFlow{Kind: f.result.kind, Path: f.result.steps, Part: f.resultPart, Sunk: f.result.sunk}
	}
	for i := range fn.Params {
		f := c.newFlow(fn, i)
		f.propagate()
		if f.result != nil {
			s.ToResult = append(s.ToResult, sumFlow{Kind: fromParam, Param: i, Path: f.result.steps, Part: f.resultPart, Access: f.result.access, Sunk: f.result.sunk})
		}
		if len(f.hits) > 0 {
			s.ToSink = append(s.ToSink, sumFlow{Kind: fromParam, Param: i, Path: f.hits[0].path, Access: f.hits[0].access})
		}
	}
	return s
}

// summaryOf returns the summary of a called function: computed in this pass
// for the package's own functions, imported as a fact for others.
func (c *checker) summaryOf(fn *ssa.Function) *summary {
	if o := fn.Origin(); o != nil {
		fn = o
	}
	if s, ok := c.summaries[fn]; ok {
		return s
	}
	obj, ok := fn.Object().(*types.Func)
	if !ok || obj.Pkg() == nil || obj.Pkg() == c.pass.Pkg {
		return nil
	}
	var f flowFact
	if c.pass.ImportObjectFact(obj, &f) {
		return (*summary)(&f)
	}
	return nil
}

func constString(v ssa.Value) (string, bool) {
	k, ok := v.(*ssa.Const)
	if !ok || k.Value == nil || k.Value.Kind() != constant.String {
		return "", false
	}
	return constant.StringVal(k.Value), true
}

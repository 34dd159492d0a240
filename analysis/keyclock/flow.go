package keyclock

import (
	"fmt"
	"go/token"
	"go/types"
	"strings"

	"golang.org/x/tools/go/ssa"
)

// trace is a tainted value's provenance: where it came from and the steps it
// took. Traces are immutable; then returns a new one.
type trace struct {
	kind  origin
	steps []string
	sunk  bool // went through a key builder, where it was reported

	// For a parameter's taint: the path (fields, elements) below the
	// parameter at which the function first read it; "" for all of it.
	// A caller whose argument is tainted only elsewhere is not affected.
	access   string
	accessed bool
}

// then returns t extended by step; a step equal to the last one is folded.
// A parameter's value transformed as a whole counts as read whole.
func (t *trace) then(step string) *trace {
	if t == nil {
		return nil
	}
	if step == "" || len(t.steps) > 0 && t.steps[len(t.steps)-1] == step {
		return t
	}
	steps := make([]string, len(t.steps), len(t.steps)+1)
	copy(steps, t.steps)
	n := *t
	n.steps = append(steps, step)
	n.accessed = true
	return &n
}

func (t *trace) asSunk() *trace {
	if t.sunk {
		return t
	}
	n := *t
	n.sunk = true
	return &n
}

// reading is t as read at path below the value it taints: for a parameter
// not read before, that path becomes its access path.
func (t *trace) reading(path string) *trace {
	if t.kind != fromParam || t.accessed {
		return t
	}
	n := *t
	n.access, n.accessed = path, true
	return &n
}

// applies reports whether a callee's flow from a parameter, which reads it
// at access, carries an argument tainted at part, and which part of what
// the callee read is tainted.
func applies(part, access string) (rest string, ok bool) {
	switch {
	case part == "" || strings.HasPrefix(access, part):
		return "", true
	case strings.HasPrefix(part, access):
		return part[len(access):], true
	}
	return "", false
}

// hit is a tainted value reaching a sink.
type hit struct {
	pos    token.Pos
	kind   origin
	path   []string // ends with the sink
	access string   // for a parameter: where the function read it
}

// cell is tainted memory: a path of fields ("f2/") and elements ("[]/")
// below a root value.
type cell struct {
	path string
	t    *trace
}

// flow propagates taint through one function, flow-insensitively, until
// nothing changes. Seeded by sources (param < 0) it yields the function's
// reports and whether its result derives from a source; seeded by one
// parameter it yields whether that parameter reaches the result or a sink.
type flow struct {
	c          *checker
	fn         *ssa.Function
	param      int
	val        map[ssa.Value]*trace
	mem        map[ssa.Value][]cell
	changed    bool
	result     *trace
	resultPart string // the tainted part of the result, "" for all of it
	hits       []hit
	hitDone    map[ssa.Instruction]bool
}

func (c *checker) newFlow(fn *ssa.Function, param int) *flow {
	f := &flow{
		c: c, fn: fn, param: param,
		val:     map[ssa.Value]*trace{},
		mem:     map[ssa.Value][]cell{},
		hitDone: map[ssa.Instruction]bool{},
	}
	if param >= 0 {
		f.val[fn.Params[param]] = &trace{kind: fromParam}
	} else {
		for j, fv := range fn.FreeVars {
			if t := c.seeds[fn][j]; t != nil {
				f.val[fv] = t
			}
		}
	}
	return f
}

func (f *flow) propagate() {
	for range 64 {
		f.changed = false
		for _, b := range f.fn.Blocks {
			for _, ins := range b.Instrs {
				f.step(ins)
			}
		}
		if !f.changed {
			return
		}
	}
}

func (f *flow) set(v ssa.Value, t *trace) {
	if t == nil || v == nil || f.val[v] != nil {
		return
	}
	f.val[v] = t
	f.changed = true
}

// locate returns the value an address or slice points into, and the path
// of fields and elements below it.
func locate(v ssa.Value) (ssa.Value, string) {
	path := ""
	for {
		switch x := v.(type) {
		case *ssa.FieldAddr:
			path = fmt.Sprintf("f%d/", x.Field) + path
			v = x.X
		case *ssa.IndexAddr:
			path = "[]/" + path
			v = x.X
		case *ssa.Slice:
			v = x.X
		case *ssa.ChangeType:
			v = x.X
		case *ssa.MakeInterface:
			v = x.X
		case *ssa.ChangeInterface:
			v = x.X
		case *ssa.Extract:
			path = fmt.Sprintf("r%d/", x.Index) + path
			v = x.Tuple
		default:
			return v, path
		}
	}
}

func (f *flow) setMem(addr ssa.Value, t *trace) {
	root, path := locate(addr)
	f.setMemAt(root, path, t)
}

// setMemAt taints the memory below root at path.
func (f *flow) setMemAt(root ssa.Value, path string, t *trace) {
	if t == nil || root == nil {
		return
	}
	if _, ok := root.(*ssa.Const); ok {
		return
	}
	for _, c := range f.mem[root] {
		if c.path == path {
			return
		}
	}
	f.mem[root] = append(f.mem[root], cell{path: path, t: t})
	f.changed = true
}

// memTaint is the taint of what addr points to, extended by a field path.
func (f *flow) memTaint(addr ssa.Value, extra string) *trace {
	t, _ := f.memCell(addr, extra)
	return t
}

// memCell is memTaint that also returns, when only part of what addr points
// to is tainted, the path of that part below addr ("" for all of it).
func (f *flow) memCell(addr ssa.Value, extra string) (*trace, string) {
	root, path := locate(addr)
	path += extra
	if t := f.val[root]; t != nil {
		return t.reading(path), ""
	}
	for _, c := range f.mem[root] {
		if strings.HasPrefix(path, c.path) {
			return c.t.reading(path[len(c.path):]), ""
		}
		if strings.HasPrefix(c.path, path) {
			return c.t, c.path[len(path):]
		}
	}
	return nil, ""
}

// taintOf is v's taint: its own, or for a pointer, a slice, a map or a
// loaded value, that of the memory it refers to.
func (f *flow) taintOf(v ssa.Value) *trace {
	t, _ := f.taintPart(v)
	return t
}

// taintPart is taintOf with the path of the tainted part of v.
func (f *flow) taintPart(v ssa.Value) (*trace, string) {
	switch v.(type) {
	case nil, *ssa.Const, *ssa.Function, *ssa.Builtin:
		return nil, ""
	}
	if t := f.val[v]; t != nil {
		return t, ""
	}
	if ld, ok := v.(*ssa.UnOp); ok && ld.Op == token.MUL {
		return f.memCell(ld.X, "")
	}
	return f.memCell(v, "")
}

func (f *flow) first(vs ...ssa.Value) *trace {
	for _, v := range vs {
		if t := f.taintOf(v); t != nil {
			return t
		}
	}
	return nil
}

func (f *flow) step(ins ssa.Instruction) {
	switch x := ins.(type) {
	case *ssa.Phi:
		f.set(x, f.first(x.Edges...))
	case *ssa.BinOp:
		f.set(x, f.first(x.X, x.Y).then(x.Op.String()))
	case *ssa.UnOp:
		switch x.Op {
		case token.MUL: // a load
			if g, ok := x.X.(*ssa.Global); ok && f.param < 0 && g.Pkg != nil &&
				g.Pkg.Pkg.Path() == "crypto/rand" && g.Name() == "Reader" {
				f.set(x, &trace{kind: fromRandom, steps: []string{"crypto/rand.Reader"}})
			}
			// Otherwise a load's taint is that of the memory it reads,
			// computed by taintOf when needed.
		case token.ARROW: // channels are not followed
		default:
			f.set(x, f.taintOf(x.X))
		}
	case *ssa.Field:
		if ld, ok := x.X.(*ssa.UnOp); ok && ld.Op == token.MUL {
			// A field of a loaded struct: only that field's memory counts.
			f.set(x, f.memTaint(ld.X, fmt.Sprintf("f%d/", x.Field)))
		} else if t := f.val[x.X]; t != nil {
			f.set(x, t.reading(fmt.Sprintf("f%d/", x.Field)))
		} else {
			f.set(x, f.memTaint(x.X, fmt.Sprintf("f%d/", x.Field)))
		}
	case *ssa.Index:
		f.set(x, f.first(x.X, x.Index))
	case *ssa.Lookup:
		f.set(x, f.first(x.X, x.Index))
	case *ssa.Slice:
		f.set(x, f.first(x.X, x.Low, x.High, x.Max))
	case *ssa.Convert:
		f.set(x, f.taintOf(x.X))
	case *ssa.ChangeType:
		f.set(x, f.taintOf(x.X))
	case *ssa.MultiConvert:
		f.set(x, f.taintOf(x.X))
	case *ssa.MakeInterface:
		f.set(x, f.taintOf(x.X))
	case *ssa.ChangeInterface:
		f.set(x, f.taintOf(x.X))
	case *ssa.SliceToArrayPointer:
		f.set(x, f.taintOf(x.X))
	case *ssa.TypeAssert:
		f.set(x, f.taintOf(x.X))
	case *ssa.Extract:
		// Only a wholly tainted tuple taints every element; a part of a
		// result is found through memory (see locate).
		f.set(x, f.val[x.Tuple])
	case *ssa.Range:
		f.set(x, f.taintOf(x.X))
	case *ssa.Next:
		f.set(x, f.taintOf(x.Iter))
	case *ssa.MakeClosure:
		if f.param >= 0 {
			return
		}
		anon := x.Fn.(*ssa.Function)
		for j, b := range x.Bindings {
			if t := f.taintOf(b); t != nil {
				if f.c.seeds[anon] == nil {
					f.c.seeds[anon] = map[int]*trace{}
				}
				if f.c.seeds[anon][j] == nil {
					f.c.seeds[anon][j] = t
				}
			}
		}
	case *ssa.Store:
		t, part := f.taintPart(x.Val)
		if t == nil {
			return
		}
		if fa, ok := x.Addr.(*ssa.FieldAddr); ok && !t.sunk {
			pkg, typ, field, ok := namedField(fa.X.Type(), fa.Field)
			if ok && field == "IdempotencyKey" && stripePath.MatchString(pkg) {
				f.hit(x, t.then("stripe."+typ+".IdempotencyKey"))
			}
		}
		root, path := locate(x.Addr)
		f.setMemAt(root, path+part, t)
	case *ssa.MapUpdate:
		t := f.first(x.Value, x.Key)
		if t == nil {
			return
		}
		if name, ok := constString(x.Key); ok && !t.sunk && headerType(x.Map.Type()) && f.c.keyHeader(name) {
			if vt := f.taintOf(x.Value); vt != nil {
				f.hit(x, vt.then(fmt.Sprintf("%s[%q]", typeLabel(x.Map.Type()), name)))
			}
		}
		f.setMem(x.Map, t)
	case *ssa.Return:
		for i, r := range x.Results {
			t, part := f.taintPart(r)
			if t == nil || f.result != nil && (!f.result.sunk || t.sunk) {
				continue
			}
			if len(x.Results) > 1 {
				part = fmt.Sprintf("r%d/", i) + part
			}
			f.result, f.resultPart = t, part
		}
	case ssa.CallInstruction:
		f.call(x)
	}
}

// readThrough is t as read by a callee that reads its argument a at
// access: for a parameter of this function not read before, the access
// path becomes a's path below it followed by the callee's.
func (f *flow) readThrough(a ssa.Value, t *trace, access string) *trace {
	if ld, ok := a.(*ssa.UnOp); ok && ld.Op == token.MUL {
		a = ld.X
	}
	root, path := locate(a)
	if s := f.val[root]; s != nil {
		return s.reading(path + access)
	}
	for _, c := range f.mem[root] {
		if strings.HasPrefix(path, c.path) {
			// The parameter was stored here (a local copy of it).
			return c.t.reading(path[len(c.path):] + access)
		}
	}
	return t
}

// setResult taints a call's result, or only the part of it at path.
func (f *flow) setResult(res ssa.Value, path string, t *trace) {
	if path == "" {
		f.set(res, t)
	} else {
		f.setMemAt(res, path, t)
	}
}

// hit records a tainted value reaching a sink, once per instruction.
func (f *flow) hit(ins ssa.Instruction, t *trace) {
	if f.hitDone[ins] {
		return
	}
	f.hitDone[ins] = true
	pos := ins.Pos()
	if st, ok := ins.(*ssa.Store); ok && !pos.IsValid() {
		if pos = st.Addr.Pos(); !pos.IsValid() {
			pos = st.Val.Pos()
		}
	}
	if !pos.IsValid() {
		pos = f.fn.Pos()
	}
	f.hits = append(f.hits, hit{pos: pos, kind: t.kind, path: t.steps, access: t.access})
}

func (f *flow) call(ins ssa.CallInstruction) {
	common := ins.Common()
	var res ssa.Value
	if v := ins.Value(); v != nil {
		res = v
	}
	cal, args, sig, static, ok := describe(common)
	if !ok {
		return // a call through a function value: not followed
	}

	if f.param < 0 && cal.fn != "" {
		if kind, ok := f.c.source(cal); ok {
			t := &trace{kind: kind, steps: []string{cal.label()}}
			f.set(res, t)
			if cal.fn == "Read" && len(args) > 0 {
				f.setMem(args[0], t) // crypto/rand.Read(buf), math/rand.Read(buf)
			}
			return
		}
	}

	switch {
	case keySink(cal, sig):
		var first, fresh *trace
		for _, a := range args {
			if t := f.taintOf(a); t != nil {
				if first == nil {
					first = t
				}
				if fresh == nil && !t.sunk {
					fresh = t
				}
			}
		}
		label := sinkLabel(cal, args)
		if fresh != nil {
			f.hit(ins, fresh.then(label))
			first = fresh
		}
		if first != nil {
			f.set(res, first.then(label).asSunk())
		}
		return
	case stripeSink(cal) && len(args) > 0:
		if t := f.taintOf(args[len(args)-1]); t != nil && !t.sunk {
			f.hit(ins, t.then(cal.qualified()))
		}
		return
	case (cal.fn == "Set" || cal.fn == "Add") && cal.recv != "" && len(args) == 3 && headerType(args[0].Type()):
		if name, ok := constString(args[1]); ok && f.c.keyHeader(name) {
			if t := f.taintOf(args[2]); t != nil && !t.sunk {
				f.hit(ins, t.then(fmt.Sprintf("%s.%s(%q)", typeLabel(args[0].Type()), cal.fn, name)))
			}
		}
		return
	}

	if transparent(cal) {
		f.through(cal, args, res)
		return
	}
	if static != nil {
		if s := f.c.summaryOf(static); s != nil {
			label := calleeLabel(static, f.c.pass.Pkg)
			if f.param < 0 && s.Result != nil {
				f.setResult(res, s.Result.Part, (&trace{kind: s.Result.Kind, steps: s.Result.Path, sunk: s.Result.Sunk}).then(label))
			}
			for i, a := range args {
				t, part := f.taintPart(a)
				if t == nil {
					continue
				}
				if fl, ok := flowOf(s.ToSink, i); ok && !t.sunk {
					if _, ok := applies(part, fl.Access); ok {
						h := f.readThrough(a, t, fl.Access).then(label)
						for _, st := range fl.Path {
							h = h.then(st)
						}
						f.hit(ins, h)
					}
				}
				if fl, ok := flowOf(s.ToResult, i); ok {
					if rest, ok := applies(part, fl.Access); ok {
						t := f.readThrough(a, t, fl.Access).then(label)
						if fl.Sunk {
							t = t.asSunk()
						}
						f.setResult(res, fl.Part+rest, t)
					}
				}
			}
			return
		}
	}
	// Anything else is unknown code: not followed.
}

// through propagates taint across a call into a package known to only
// transform data (see transparentPackages).
func (f *flow) through(cal callee, args []ssa.Value, res ssa.Value) {
	d := destination(cal, len(args))
	var all, other *trace
	for i, a := range args {
		if t := f.taintOf(a); t != nil {
			if all == nil {
				all = t
			}
			if other == nil && i != d {
				other = t
			}
		}
	}
	f.set(res, all.then(cal.label()))
	if d >= 0 && other != nil {
		f.setMem(args[d], other.then(cal.label()))
	}
}

// describe names a call's target and lists its arguments, the receiver
// first for a method. ok is false for calls through function values.
func describe(c *ssa.CallCommon) (cal callee, args []ssa.Value, sig *types.Signature, static *ssa.Function, ok bool) {
	if c.IsInvoke() {
		m := c.Method
		cal = callee{fn: m.Name(), recv: "interface"}
		if n, isNamed := types.Unalias(c.Value.Type()).(*types.Named); isNamed {
			cal.recv = n.Obj().Name()
		}
		if m.Pkg() != nil {
			cal.pkg, cal.name = m.Pkg().Path(), m.Pkg().Name()
		}
		return cal, append([]ssa.Value{c.Value}, c.Args...), m.Signature(), nil, true
	}
	if b, isBuiltin := c.Value.(*ssa.Builtin); isBuiltin {
		return callee{fn: b.Name()}, c.Args, c.Signature(), nil, true
	}
	static = c.StaticCallee()
	if static == nil {
		return callee{}, nil, nil, nil, false
	}
	fn := static
	if o := fn.Origin(); o != nil {
		fn = o
	}
	sig = c.Signature()
	if obj, isFunc := fn.Object().(*types.Func); isFunc && obj.Pkg() != nil {
		cal = callee{pkg: obj.Pkg().Path(), name: obj.Pkg().Name(), fn: obj.Name()}
		if recv := obj.Signature().Recv(); recv != nil {
			cal.recv = namedName(recv.Type())
		}
	}
	return cal, c.Args, sig, static, true
}

// namedName is the name of a (pointer to a) named type, or "".
func namedName(t types.Type) string {
	if p, ok := types.Unalias(t).(*types.Pointer); ok {
		t = p.Elem()
	}
	if n, ok := types.Unalias(t).(*types.Named); ok {
		return n.Obj().Name()
	}
	return ""
}

// typeLabel is "http.Header" for net/http.Header.
func typeLabel(t types.Type) string {
	if n, ok := types.Unalias(t).(*types.Named); ok && n.Obj().Pkg() != nil {
		return n.Obj().Pkg().Name() + "." + n.Obj().Name()
	}
	return t.String()
}

// sinkLabel is `idempotency.Int("bucket")`: the builder and, when its first
// argument after the receiver is a constant string, that string.
func sinkLabel(c callee, args []ssa.Value) string {
	i := 0
	if c.recv != "" {
		i = 1
	}
	if i < len(args) {
		if s, ok := constString(args[i]); ok {
			return fmt.Sprintf("%s(%q)", c.qualified(), s)
		}
	}
	return c.qualified()
}

// calleeLabel is how a summarised call appears in a path: "helper()",
// "jobs.Helper()", "Job.Key()", "func literal".
func calleeLabel(fn *ssa.Function, here *types.Package) string {
	if o := fn.Origin(); o != nil {
		fn = o
	}
	obj, ok := fn.Object().(*types.Func)
	if !ok {
		return "func literal"
	}
	name := obj.Name()
	if recv := obj.Signature().Recv(); recv != nil {
		if r := namedName(recv.Type()); r != "" {
			name = r + "." + name
		}
	}
	if obj.Pkg() != nil && obj.Pkg() != here {
		name = obj.Pkg().Name() + "." + name
	}
	return name + "()"
}

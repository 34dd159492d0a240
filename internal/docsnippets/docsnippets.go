package docsnippets

import (
	"errors"
	"fmt"
	"go/ast"
	"go/build"
	"go/format"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// Ref names a snippet's source: a Go file, relative to the module root
// (slash-separated), and a region or function name in it.
type Ref struct {
	File string
	Name string
}

func (r Ref) String() string { return r.File + "#" + r.Name }

// Block is one fenced ```go block of a markdown file.
type Block struct {
	Doc  string // the markdown file, relative to the root
	Line int    // the line of the opening fence, from 1
	// Ref is the block's source; zero when None is set or the marker is
	// missing.
	Ref Ref
	// None is the reason given by a "snippet: none (reason)" marker.
	None string
	// Marked reports whether a marker stood directly above the fence.
	Marked bool
	// Text is the block's content, with the fence's indentation removed.
	Text string

	indent     string // the fence's indentation
	start, end int    // content lines: [start, end) as 0-based line indexes
}

// Problem is one thing wrong with the snippets of a markdown file.
type Problem struct {
	Doc  string
	Line int
	Ref  Ref // zero when the problem is not about one snippet
	Msg  string
}

func (p Problem) Error() string {
	if p.Ref.File != "" {
		return fmt.Sprintf("%s:%d: snippet %s: %s", p.Doc, p.Line, p.Ref, p.Msg)
	}
	return fmt.Sprintf("%s:%d: %s", p.Doc, p.Line, p.Msg)
}

var (
	markerRE = regexp.MustCompile(`^<!--\s*snippet:\s*(.*?)\s*-->$`)
	noneRE   = regexp.MustCompile(`^none\s*\((.*)\)$`)
	refRE    = regexp.MustCompile(`^([^#\s]+\.go)#([A-Za-z0-9_.-]+)$`)
	fenceRE  = regexp.MustCompile("^([ \t]*)(`{3,}|~{3,})[ \t]*([^ \t`]*)")
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
)

// ParseMarkdown returns the ```go blocks of a markdown file and the
// problems found with their markers: a block without one, a marker that
// does not parse, a marker not directly above a ```go block, a fence left
// open.
func ParseMarkdown(doc string, src []byte) ([]Block, []Problem) {
	lines := strings.Split(string(src), "\n")
	var (
		blocks   []Block
		problems []Problem
	)
	marker := func(i int) (string, bool) {
		if i < 0 {
			return "", false
		}
		m := markerRE.FindStringSubmatch(strings.TrimSpace(lines[i]))
		if m == nil {
			return "", false
		}
		return m[1], true
	}
	used := map[int]bool{}   // marker lines consumed by a block
	fenced := map[int]bool{} // lines inside any fence, fences included
	for i := 0; i < len(lines); i++ {
		f := fenceRE.FindStringSubmatch(lines[i])
		if f == nil {
			continue
		}
		indent, fence, info := f[1], f[2], strings.ToLower(f[3])
		// Find the closing fence: the same character, at least as long,
		// nothing else on the line.
		end := -1
		for j := i + 1; j < len(lines); j++ {
			t := strings.TrimSpace(lines[j])
			if len(t) >= len(fence) && strings.Trim(t, fence[:1]) == "" {
				end = j
				break
			}
		}
		if end < 0 {
			problems = append(problems, Problem{Doc: doc, Line: i + 1, Msg: "code fence is never closed"})
			break
		}
		for j := i; j <= end; j++ {
			fenced[j] = true
		}
		if info == "go" || info == "golang" {
			b := Block{Doc: doc, Line: i + 1, indent: indent, start: i + 1, end: end}
			var content []string
			for _, l := range lines[i+1 : end] {
				content = append(content, strings.TrimPrefix(l, indent))
			}
			b.Text = strings.Join(content, "\n")
			if m, ok := marker(i - 1); ok {
				used[i-1] = true
				b.Marked = true
				if n := noneRE.FindStringSubmatch(m); n != nil {
					b.None = strings.TrimSpace(n[1])
					if b.None == "" {
						problems = append(problems, Problem{Doc: doc, Line: i, Msg: "\"snippet: none\" needs a reason: <!-- snippet: none (why this cannot compile) -->"})
					}
				} else if r := refRE.FindStringSubmatch(m); r != nil {
					b.Ref = Ref{File: r[1], Name: r[2]}
				} else {
					problems = append(problems, Problem{Doc: doc, Line: i, Msg: fmt.Sprintf(
						"marker %q: want <!-- snippet: path/to/file.go#name --> or <!-- snippet: none (reason) -->", m)})
				}
			} else {
				problems = append(problems, Problem{Doc: doc, Line: i + 1, Msg: "```go block without a snippet marker: " +
					"put <!-- snippet: path/to/file_test.go#name --> on the line above it (or <!-- snippet: none (reason) --> for code that cannot compile)"})
			}
			blocks = append(blocks, b)
		}
		i = end
	}
	for i := range lines {
		if _, ok := marker(i); ok && !used[i] && !fenced[i] {
			problems = append(problems, Problem{Doc: doc, Line: i + 1, Msg: "snippet marker is not directly above a ```go block"})
		}
	}
	return blocks, problems
}

// Region returns the text of the region name in a Go file's source: the
// lines between "// snippet:name" and its "// end snippet", or else the
// body of the top-level function name (without a trailing "// Output:"
// comment). Marker lines, and lines hidden by "// snippet:hide-next", are
// left out.
func Region(filename string, src []byte, name string) (string, error) {
	lines := strings.Split(string(src), "\n")
	type open struct {
		name string
		line int
	}
	var (
		stack []open
		found []int // line indexes of the region's text
		start = -1
		count int
		hide  bool
	)
	for i, l := range lines {
		t := strings.TrimSpace(l)
		switch {
		case t == "// snippet:hide-next":
			hide = true
			continue
		case t == "// end snippet":
			if len(stack) == 0 {
				return "", fmt.Errorf("%s:%d: \"// end snippet\" without an open region", filename, i+1)
			}
			stack = stack[:len(stack)-1]
			continue
		case strings.HasPrefix(t, "// snippet:"):
			n := strings.TrimSpace(strings.TrimPrefix(t, "// snippet:"))
			if !nameRE.MatchString(n) {
				return "", fmt.Errorf("%s:%d: region name %q: use letters, digits, '_', '-' and '.'", filename, i+1, n)
			}
			stack = append(stack, open{n, i + 1})
			if n == name {
				count++
				start = i + 1
			}
			continue
		}
		if hide {
			hide = false
			continue
		}
		if slices.ContainsFunc(stack, func(o open) bool { return o.name == name }) {
			found = append(found, i)
		}
	}
	if len(stack) > 0 {
		o := stack[len(stack)-1]
		return "", fmt.Errorf("%s:%d: region %q is never closed with \"// end snippet\"", filename, o.line, o.name)
	}
	switch {
	case count > 1:
		return "", fmt.Errorf("%s: %d regions are named %q", filename, count, name)
	case count == 1:
		if len(found) == 0 {
			return "", fmt.Errorf("%s:%d: region %q is empty", filename, start, name)
		}
		text := make([]string, len(found))
		for i, n := range found {
			text[i] = lines[n]
		}
		return strings.Join(text, "\n"), nil
	}
	return funcBody(filename, src, name)
}

// funcBody returns the body of the top-level function name, between its
// braces, without a trailing example output comment.
func funcBody(filename string, src []byte, name string) (string, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, filename, src, parser.ParseComments)
	if err != nil {
		return "", fmt.Errorf("no region %q, and the file does not parse: %w", name, err)
	}
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Recv != nil || fn.Name.Name != name || fn.Body == nil {
			continue
		}
		from := fset.Position(fn.Body.Lbrace).Line // 1-based: the body starts on the next line
		to := fset.Position(fn.Body.Rbrace).Line - 1
		lines := strings.Split(string(src), "\n")
		body := lines[from:to]
		// Drop the example's output comment and everything after it.
		for i, l := range body {
			t := strings.TrimSpace(l)
			if strings.HasPrefix(t, "// Output:") || strings.HasPrefix(t, "// Unordered output:") {
				body = body[:i]
				break
			}
		}
		if strings.TrimSpace(strings.Join(body, "")) == "" {
			return "", fmt.Errorf("function %s has an empty body", name)
		}
		return strings.Join(body, "\n"), nil
	}
	return "", fmt.Errorf("no region \"// snippet:%s\" and no top-level function %s", name, name)
}

// Normalize strips blank lines around code and the indentation common to
// every non-blank line, then formats the result with go/format (which
// accepts a whole file, a list of declarations or a list of statements).
func Normalize(code string) (string, error) {
	lines := strings.Split(strings.ReplaceAll(code, "\r\n", "\n"), "\n")
	for len(lines) > 0 && strings.TrimSpace(lines[0]) == "" {
		lines = lines[1:]
	}
	for len(lines) > 0 && strings.TrimSpace(lines[len(lines)-1]) == "" {
		lines = lines[:len(lines)-1]
	}
	if len(lines) == 0 {
		return "", errors.New("no code")
	}
	prefix := ""
	first := true
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			continue
		}
		ws := l[:len(l)-len(strings.TrimLeft(l, " \t"))]
		if first {
			prefix, first = ws, false
			continue
		}
		for !strings.HasPrefix(ws, prefix) {
			prefix = prefix[:len(prefix)-1]
		}
	}
	for i, l := range lines {
		lines[i] = strings.TrimPrefix(l, prefix)
		if strings.TrimSpace(lines[i]) == "" {
			lines[i] = ""
		}
	}
	out, err := format.Source([]byte(strings.Join(lines, "\n") + "\n"))
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(out), "\n"), nil
}

// firstDifference describes the first line where two texts differ.
func firstDifference(doc, src string) string {
	a, b := strings.Split(doc, "\n"), strings.Split(src, "\n")
	for i := 0; i < max(len(a), len(b)); i++ {
		var x, y string
		if i < len(a) {
			x = a[i]
		} else {
			x = "(end of block)"
		}
		if i < len(b) {
			y = b[i]
		} else {
			y = "(end of region)"
		}
		if x != y {
			return fmt.Sprintf("line %d of the snippet:\n\tdoc:    %s\n\tsource: %s", i+1, x, y)
		}
	}
	return ""
}

// compiled reports why file (slash-separated, relative to root) is not one
// the go command compiles, or "" when it is.
func compiled(root, file string) string {
	if path.IsAbs(file) || strings.HasPrefix(path.Clean(file), "..") {
		return "the path must be relative to the module root, inside it"
	}
	if !strings.HasSuffix(file, ".go") {
		return "not a .go file"
	}
	for _, dir := range strings.Split(path.Dir(path.Clean(file)), "/") {
		if dir == "testdata" || strings.HasPrefix(dir, "_") || (strings.HasPrefix(dir, ".") && dir != ".") {
			return "the go command ignores directory " + dir + ": the source would never be compiled"
		}
	}
	dir, base := filepath.Split(filepath.Join(root, filepath.FromSlash(file)))
	ok, err := build.Default.MatchFile(dir, base)
	if err != nil {
		return err.Error()
	}
	if !ok {
		return "excluded by its build constraints or file name: it would never be compiled here"
	}
	return ""
}

// source is one Go file read once.
type source struct {
	src []byte
	err string // why it cannot be a snippet source
}

// Checker checks, or updates, the markdown files of a module.
type Checker struct {
	// Root is the module root; Ref.File and Block.Doc are relative to it.
	Root  string
	files map[string]source
}

func (c *Checker) file(name string) source {
	if c.files == nil {
		c.files = map[string]source{}
	}
	if s, ok := c.files[name]; ok {
		return s
	}
	var s source
	if why := compiled(c.Root, name); why != "" {
		s.err = why
	} else if b, err := os.ReadFile(filepath.Join(c.Root, filepath.FromSlash(name))); err != nil {
		s.err = err.Error()
	} else {
		s.src = b
	}
	c.files[name] = s
	return s
}

// expected returns the normalised text of a block's source region.
func (c *Checker) expected(b Block) (string, *Problem) {
	p := func(msg string) *Problem { return &Problem{Doc: b.Doc, Line: b.Line, Ref: b.Ref, Msg: msg} }
	s := c.file(b.Ref.File)
	if s.err != "" {
		return "", p("source " + b.Ref.File + ": " + s.err)
	}
	text, err := Region(b.Ref.File, s.src, b.Ref.Name)
	if err != nil {
		return "", p(err.Error())
	}
	want, err := Normalize(text)
	if err != nil {
		return "", p("the source region is not Go that go/format accepts: " + err.Error())
	}
	return want, nil
}

// Docs returns README.md (if present) and every .md file under docs/,
// relative to root, sorted.
func Docs(root string) ([]string, error) {
	var docs []string
	if _, err := os.Stat(filepath.Join(root, "README.md")); err == nil {
		docs = append(docs, "README.md")
	}
	err := filepath.WalkDir(filepath.Join(root, "docs"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".md") {
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			docs = append(docs, filepath.ToSlash(rel))
		}
		return nil
	})
	slices.Sort(docs)
	return docs, err
}

// Check checks every ```go block of docs (relative to Root) against its
// source and returns what is wrong, and the number of blocks checked
// against a source.
func (c *Checker) Check(docs []string) (problems []Problem, checked int) {
	for _, doc := range docs {
		src, err := os.ReadFile(filepath.Join(c.Root, filepath.FromSlash(doc)))
		if err != nil {
			problems = append(problems, Problem{Doc: doc, Line: 0, Msg: err.Error()})
			continue
		}
		blocks, ps := ParseMarkdown(doc, src)
		problems = append(problems, ps...)
		for _, b := range blocks {
			if b.Ref.File == "" {
				continue
			}
			want, p := c.expected(b)
			if p != nil {
				problems = append(problems, *p)
				continue
			}
			checked++
			got, err := Normalize(b.Text)
			if err != nil {
				problems = append(problems, Problem{Doc: doc, Line: b.Line, Ref: b.Ref, Msg: "the block is not Go that go/format accepts: " + err.Error()})
				continue
			}
			if got != want {
				problems = append(problems, Problem{Doc: doc, Line: b.Line, Ref: b.Ref,
					Msg: "the block has drifted from its source; first difference at " + firstDifference(got, want) +
						"\n\t(to copy the source into the markdown: go test ./internal/docsnippets -run TestDocsMatchTheirSources -update)"})
			}
		}
	}
	return problems, checked
}

// Update rewrites the ```go blocks of docs whose source can be read with the
// formatted text of that source, and returns the markdown files it changed
// and the problems that kept any block from being updated.
func (c *Checker) Update(docs []string) (changed []string, problems []Problem) {
	for _, doc := range docs {
		name := filepath.Join(c.Root, filepath.FromSlash(doc))
		src, err := os.ReadFile(name)
		if err != nil {
			problems = append(problems, Problem{Doc: doc, Msg: err.Error()})
			continue
		}
		blocks, ps := ParseMarkdown(doc, src)
		problems = append(problems, ps...)
		lines := strings.Split(string(src), "\n")
		// Replace from the last block up, so earlier line indexes hold.
		for i := len(blocks) - 1; i >= 0; i-- {
			b := blocks[i]
			if b.Ref.File == "" {
				continue
			}
			want, p := c.expected(b)
			if p != nil {
				problems = append(problems, *p)
				continue
			}
			var repl []string
			for _, l := range strings.Split(want, "\n") {
				if l == "" {
					repl = append(repl, "")
				} else {
					repl = append(repl, b.indent+l)
				}
			}
			lines = slices.Replace(lines, b.start, b.end, repl...)
		}
		out := strings.Join(lines, "\n")
		if out != string(src) {
			if err := os.WriteFile(name, []byte(out), 0o644); err != nil {
				problems = append(problems, Problem{Doc: doc, Msg: err.Error()})
				continue
			}
			changed = append(changed, doc)
		}
	}
	return changed, problems
}

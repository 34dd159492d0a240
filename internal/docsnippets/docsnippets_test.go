package docsnippets

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "copy each snippet's source region into README.md and docs/")

// TestDocsMatchTheirSources is the check itself: every ```go block of the
// module's README.md and docs/ is a copy of a compiled region.
func TestDocsMatchTheirSources(t *testing.T) {
	root := filepath.Join("..", "..")
	docs, err := Docs(root)
	require.NoError(t, err)
	require.Contains(t, docs, "README.md")
	c := &Checker{Root: root}
	if *update {
		changed, problems := c.Update(docs)
		for _, d := range changed {
			t.Logf("updated %s", d)
		}
		for _, p := range problems {
			t.Errorf("%v", p)
		}
		c = &Checker{Root: root}
	}
	problems, checked := c.Check(docs)
	for _, p := range problems {
		t.Errorf("%v", p)
	}
	t.Logf("%d markdown files, %d Go blocks checked against their sources", len(docs), checked)
	require.Positive(t, checked, "no Go block was checked: the walk found nothing")
}

// fixture writes files under a new root and returns a checker on it.
func fixture(t *testing.T, files map[string]string) *Checker {
	t.Helper()
	root := t.TempDir()
	for name, text := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(text), 0o644))
	}
	return &Checker{Root: root}
}

const src = `package x_test

import "fmt"

func use() {
	x := 1
	// snippet:add
	y := x + 1
	fmt.Println(y)
	// end snippet
	_ = x
}

// snippet:decls
func outer() {
	// snippet:inner
	fmt.Println("inner")
	// end snippet
	// snippet:hide-next
	fmt.Println("hidden") // a directive the reader must not see
	fmt.Println("shown")
}
// end snippet

func ExampleThing() {
	fmt.Println("hi")
	// Output: hi
}
`

// messages returns the problems' texts.
func messages(ps []Problem) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Error())
	}
	return out
}

func TestCheckAcceptsBlocksEqualToTheirSourceUpToLayout(t *testing.T) {
	c := fixture(t, map[string]string{
		"x/x_test.go": src,
		"README.md": "# X\n\n<!-- snippet: x/x_test.go#add -->\n```go\ny := x + 1\nfmt.Println(y)\n```\n\n" +
			// Inside a list item, indented, with other spacing: still equal.
			"- item\n\n  <!-- snippet: x/x_test.go#add -->\n  ```go\n  y := x+1\n  fmt.Println( y )\n  ```\n" +
			"\n<!-- snippet: x/x_test.go#decls -->\n```go\nfunc outer() {\n\tfmt.Println(\"inner\")\n\tfmt.Println(\"shown\")\n}\n```\n" +
			"\n<!-- snippet: x/x_test.go#inner -->\n```go\nfmt.Println(\"inner\")\n```\n" +
			"\n<!-- snippet: x/x_test.go#ExampleThing -->\n```go\nfmt.Println(\"hi\")\n```\n" +
			"\n<!-- snippet: none (a sketch of the steps) -->\n```go\nclaim(); call(); complete()\n```\n" +
			"\n```sh\ngo test ./...\n```\n",
	})
	problems, checked := c.Check([]string{"README.md"})
	require.Empty(t, messages(problems))
	require.Equal(t, 5, checked)
}

func TestCheckFailsOnDriftNamingTheFileAndTheSnippet(t *testing.T) {
	c := fixture(t, map[string]string{
		"x/x_test.go":   src,
		"docs/guide.md": "# Guide\n\ntext\n\n<!-- snippet: x/x_test.go#add -->\n```go\ny := x + 2\nfmt.Println(y)\n```\n",
	})
	problems, _ := c.Check([]string{"docs/guide.md"})
	require.Len(t, problems, 1)
	msg := problems[0].Error()
	require.Contains(t, msg, "docs/guide.md:6: snippet x/x_test.go#add: the block has drifted from its source")
	require.Contains(t, msg, "doc:    y := x + 2")
	require.Contains(t, msg, "source: y := x + 1")
}

func TestCheckFailsOnAGoBlockWithoutAMarker(t *testing.T) {
	c := fixture(t, map[string]string{
		"README.md": "# X\n\n```go\nfmt.Println(1)\n```\n\n<!-- snippet: none () -->\n```go\nx()\n```\n" +
			"\n<!-- snippet: x.go -->\n```go\nx()\n```\n",
	})
	problems, checked := c.Check([]string{"README.md"})
	require.Zero(t, checked)
	got := strings.Join(messages(problems), "\n")
	require.Contains(t, got, "README.md:3: ```go block without a snippet marker")
	require.Contains(t, got, "README.md:7: \"snippet: none\" needs a reason")
	require.Contains(t, got, `README.md:12: marker "x.go": want <!-- snippet: path/to/file.go#name -->`)
	require.Len(t, problems, 3)
}

func TestCheckFailsOnAMarkerNotDirectlyAboveAGoBlock(t *testing.T) {
	c := fixture(t, map[string]string{
		"x/x_test.go": src,
		"README.md": "<!-- snippet: x/x_test.go#add -->\n\n```go\ny := x + 1\nfmt.Println(y)\n```\n" +
			"\n<!-- snippet: x/x_test.go#add -->\n```sh\necho\n```\n" +
			// A marker shown inside another block is text, not a marker.
			"\n```markdown\n<!-- snippet: x/x_test.go#add -->\n```\n",
	})
	problems, _ := c.Check([]string{"README.md"})
	got := messages(problems)
	require.Equal(t, []string{
		"README.md:3: ```go block without a snippet marker: put <!-- snippet: path/to/file_test.go#name --> on the line above it (or <!-- snippet: none (reason) --> for code that cannot compile)",
		"README.md:1: snippet marker is not directly above a ```go block",
		"README.md:8: snippet marker is not directly above a ```go block",
	}, got)
}

func TestCheckFailsOnSourcesItCannotUse(t *testing.T) {
	c := fixture(t, map[string]string{
		"x/x_test.go":          src,
		"x/open_test.go":       "package x\n\n// snippet:open\nvar a = 1\n",
		"x/ignored_test.go":    "//go:build ignore\n\npackage x\n\n// snippet:a\nvar a = 1\n// end snippet\n",
		"x/testdata/t_test.go": "package x\n\n// snippet:a\nvar a = 1\n// end snippet\n",
		"x/twice_test.go":      "package x\n\n// snippet:a\nvar a = 1\n// end snippet\n// snippet:a\nvar b = 1\n// end snippet\n",
		"x/broken_test.go":     "package x\n\n// snippet:a\nvar a = \n// end snippet\n",
		"README.md": "<!-- snippet: x/x_test.go#nothere -->\n```go\nx\n```\n" +
			"<!-- snippet: x/missing_test.go#a -->\n```go\nx\n```\n" +
			"<!-- snippet: x/open_test.go#open -->\n```go\nx\n```\n" +
			"<!-- snippet: x/ignored_test.go#a -->\n```go\nx\n```\n" +
			"<!-- snippet: x/testdata/t_test.go#a -->\n```go\nx\n```\n" +
			"<!-- snippet: x/twice_test.go#a -->\n```go\nx\n```\n" +
			"<!-- snippet: x/broken_test.go#a -->\n```go\nx\n```\n" +
			"<!-- snippet: ../x_test.go#a -->\n```go\nx\n```\n" +
			"<!-- snippet: x/x_test.go#add -->\n```go\ny := (\n```\n",
	})
	problems, checked := c.Check([]string{"README.md"})
	require.Zero(t, checked-1, "only the last block's source is usable")
	got := messages(problems)
	require.Len(t, got, 9)
	for i, want := range []string{
		`README.md:2: snippet x/x_test.go#nothere: no region "// snippet:nothere" and no top-level function nothere`,
		"README.md:6: snippet x/missing_test.go#a: source x/missing_test.go: open ",
		`README.md:10: snippet x/open_test.go#open: x/open_test.go:3: region "open" is never closed`,
		"README.md:14: snippet x/ignored_test.go#a: source x/ignored_test.go: excluded by its build constraints",
		"README.md:18: snippet x/testdata/t_test.go#a: source x/testdata/t_test.go: the go command ignores directory testdata",
		`README.md:22: snippet x/twice_test.go#a: x/twice_test.go: 2 regions are named "a"`,
		"README.md:26: snippet x/broken_test.go#a: the source region is not Go that go/format accepts",
		"README.md:30: snippet ../x_test.go#a: source ../x_test.go: the path must be relative to the module root",
		"README.md:34: snippet x/x_test.go#add: the block is not Go that go/format accepts",
	} {
		require.True(t, strings.HasPrefix(got[i], want), "problem %d:\n got %s\nwant %s...", i, got[i], want)
	}
}

func TestCheckFailsOnAnUnclosedFence(t *testing.T) {
	c := fixture(t, map[string]string{"README.md": "# X\n\n```go\nx()\n"})
	problems, _ := c.Check([]string{"README.md"})
	require.Equal(t, []string{"README.md:3: code fence is never closed"}, messages(problems))
}

func TestUpdateCopiesTheSourceIntoTheMarkdown(t *testing.T) {
	doc := "# X\n\n- step\n\n  <!-- snippet: x/x_test.go#add -->\n  ```go\n  y := 0\n  ```\n\n<!-- snippet: x/x_test.go#decls -->\n```go\n```\n\nafter\n"
	c := fixture(t, map[string]string{"x/x_test.go": src, "docs/a.md": doc})
	problems, _ := c.Check([]string{"docs/a.md"})
	require.Len(t, problems, 2)

	changed, problems := c.Update([]string{"docs/a.md"})
	require.Empty(t, messages(problems))
	require.Equal(t, []string{"docs/a.md"}, changed)
	b, err := os.ReadFile(filepath.Join(c.Root, "docs", "a.md"))
	require.NoError(t, err)
	require.Equal(t, "# X\n\n- step\n\n  <!-- snippet: x/x_test.go#add -->\n  ```go\n  y := x + 1\n  fmt.Println(y)\n  ```\n\n"+
		"<!-- snippet: x/x_test.go#decls -->\n```go\nfunc outer() {\n\tfmt.Println(\"inner\")\n\tfmt.Println(\"shown\")\n}\n```\n\nafter\n", string(b))

	problems, checked := (&Checker{Root: c.Root}).Check([]string{"docs/a.md"})
	require.Empty(t, messages(problems))
	require.Equal(t, 2, checked)
}

func TestDocsFindsTheReadmeAndEveryMarkdownFileUnderDocs(t *testing.T) {
	c := fixture(t, map[string]string{"README.md": "", "docs/b.md": "", "docs/sub/a.md": "", "docs/notes.txt": "", "other.md": ""})
	docs, err := Docs(c.Root)
	require.NoError(t, err)
	require.Equal(t, []string{"README.md", "docs/b.md", "docs/sub/a.md"}, docs)
}

package docsnippets

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDocsNameTestsThatExist: docs/guarantees.md, docs/hazards.md and
// docs/state-machine.md say which test guards each rule, as
// "`package: TestName`". Each named top-level test must exist, and each
// named storetest case must be one of the suite's cases, so that a renamed
// or deleted test cannot leave a rule claiming a guard it no longer has.
func TestDocsNameTestsThatExist(t *testing.T) {
	root := filepath.Join("..", "..")
	tests := map[string]bool{}
	storetestCases := map[string]bool{}
	caseName := regexp.MustCompile(`\{"(\w+)", func|operatorCase\("(\w+)"`)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); name == ".git" || name == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		if strings.Contains(filepath.ToSlash(path), "idempotency/storetest/") {
			src, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, m := range caseName.FindAllStringSubmatch(string(src), -1) {
				storetestCases[m[1]+m[2]] = true
			}
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		for _, decl := range f.Decls {
			if fn, ok := decl.(*ast.FuncDecl); ok && fn.Recv == nil {
				tests[fn.Name.Name] = true
			}
		}
		return nil
	})
	require.NoError(t, err)
	require.True(t, tests["TestDocsNameTestsThatExist"], "the walk found this very test")
	require.True(t, storetestCases["VerdictTable"], "the walk found storetest's cases")

	cited := regexp.MustCompile("`([a-z0-9]+): (\\w+)")
	checked := 0
	for _, doc := range []string{"guarantees.md", "hazards.md", "state-machine.md"} {
		src, err := os.ReadFile(filepath.Join(root, "docs", doc))
		require.NoError(t, err)
		for _, m := range cited.FindAllStringSubmatch(string(src), -1) {
			pkg, name := m[1], m[2]
			switch {
			case pkg == "storetest":
				checked++
				if !storetestCases[name] && name != "Operator" {
					t.Errorf("docs/%s cites storetest case %s, which the suite does not have", doc, name)
				}
			case pkg == "package" && name == "TestName":
				// The docs' own explanation of the notation.
			case strings.HasPrefix(name, "Test"):
				checked++
				if !tests[name] {
					t.Errorf("docs/%s cites %s: %s, which no test file declares", doc, pkg, name)
				}
			}
		}
	}
	t.Logf("%d test names cited in the docs checked", checked)
	require.Greater(t, checked, 50)
}

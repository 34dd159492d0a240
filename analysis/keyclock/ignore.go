package keyclock

import (
	"go/token"
	"strings"

	"golang.org/x/tools/go/analysis"
)

// directive starts a suppression comment: //effectoncevet:ignore <reason>.
const directive = "//effectoncevet:ignore"

// ignores are the lines covered by suppression comments.
type ignores struct {
	lines    map[string]map[int]bool // file name → covered lines
	noReason []token.Pos             // directives without a reason
}

// collectIgnores finds the package's suppression comments. A directive
// covers its own line and, when it is alone on its line, the next one.
func collectIgnores(pass *analysis.Pass) ignores {
	ig := ignores{lines: map[string]map[int]bool{}}
	for _, file := range pass.Files {
		var src []byte
		for _, group := range file.Comments {
			for _, c := range group.List {
				rest, ok := strings.CutPrefix(c.Text, directive)
				if !ok || rest != "" && rest[0] != ' ' && rest[0] != '\t' {
					continue
				}
				if strings.TrimSpace(rest) == "" {
					ig.noReason = append(ig.noReason, c.Slash)
					continue
				}
				pos := pass.Fset.PositionFor(c.Slash, false)
				if ig.lines[pos.Filename] == nil {
					ig.lines[pos.Filename] = map[int]bool{}
				}
				ig.lines[pos.Filename][pos.Line] = true
				if src == nil && pass.ReadFile != nil {
					src, _ = pass.ReadFile(pos.Filename)
				}
				if aloneOnLine(src, pos) {
					ig.lines[pos.Filename][pos.Line+1] = true
				}
			}
		}
	}
	return ig
}

// aloneOnLine reports whether only blanks precede the comment at pos on its
// line.
func aloneOnLine(src []byte, pos token.Position) bool {
	start := pos.Offset - (pos.Column - 1)
	if start < 0 || pos.Offset > len(src) {
		return false
	}
	return strings.TrimLeft(string(src[start:pos.Offset]), " \t") == ""
}

func (ig ignores) suppressed(fset *token.FileSet, pos token.Pos) bool {
	p := fset.PositionFor(pos, false)
	return ig.lines[p.Filename][p.Line]
}

func (ig ignores) reportMissingReasons(pass *analysis.Pass) {
	for _, pos := range ig.noReason {
		pass.Reportf(pos, "%s needs a reason after it; without one it suppresses nothing", directive)
	}
}

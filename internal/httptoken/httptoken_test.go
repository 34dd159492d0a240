package httptoken

import "testing"

func TestValid(t *testing.T) {
	for _, name := range []string{"Idempotency-Key", "X-Request-Id", "a", "x!#$%&'*+-.^_`|~9"} {
		if !Valid(name) {
			t.Errorf("Valid(%q) = false, want true", name)
		}
	}
	for _, name := range []string{"", "Idempotency Key", "Key:", "Ké", "a\nb", "(x)", "a/b"} {
		if Valid(name) {
			t.Errorf("Valid(%q) = true, want false", name)
		}
	}
}

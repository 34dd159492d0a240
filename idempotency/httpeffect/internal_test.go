package httpeffect

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 14, 9, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"":                                 0,
		"30":                               30 * time.Second,
		" 5 ":                              5 * time.Second,
		"0":                                0,
		"-3":                               0,
		"1.5":                              0,
		"soon":                             0,
		"Sat, 14 Mar 2026 09:02:00 GMT":    2 * time.Minute,
		"Saturday, 14-Mar-26 09:00:30 GMT": 30 * time.Second, // RFC 850
		"Sat Mar 14 09:01:00 2026":         time.Minute,      // asctime
		"Sat, 14 Mar 2026 08:59:00 GMT":    0,                // past
		"99999999999999999999":             0,                // overflows int64: invalid
		"9223372036854775807":              time.Duration(1<<62/int64(time.Second)) * time.Second,
	} {
		require.Equal(t, want, retryAfter(v, now), "Retry-After %q", v)
	}
}

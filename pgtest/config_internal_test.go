package pgtest

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

func TestResolveSettingsPrecedence(t *testing.T) {
	code := Config{DatabaseURL: "postgres://code/db", Image: "code/image:1", Network: "host"}
	for _, tc := range []struct {
		name    string
		code    Config
		env     map[string]string
		want    settings
		wantErr string
	}{{
		name: "nothing set: container from the default image, bridged, skip",
		want: settings{image: DefaultImage},
	}, {
		name: "code only",
		code: code,
		want: settings{dsn: "postgres://code/db", dsnFrom: fromCodeDSN, image: "code/image:1", host: true},
	}, {
		name: "environment only",
		env:  map[string]string{EnvDatabaseURL: "postgres://env/db", EnvImage: "env/image:2", EnvNetwork: "host"},
		want: settings{dsn: "postgres://env/db", dsnFrom: EnvDatabaseURL, image: "env/image:2", host: true},
	}, {
		name: "environment wins, field by field",
		code: code,
		env:  map[string]string{EnvDatabaseURL: "postgres://env/db", EnvImage: "env/image:2", EnvNetwork: "bridge"},
		want: settings{dsn: "postgres://env/db", dsnFrom: EnvDatabaseURL, image: "env/image:2"},
	}, {
		name: "an empty variable is unset",
		code: code,
		env:  map[string]string{EnvDatabaseURL: "", EnvImage: ""},
		want: settings{dsn: "postgres://code/db", dsnFrom: fromCodeDSN, image: "code/image:1", host: true},
	}, {
		name: "required by the environment",
		env:  map[string]string{EnvRequired: "1"},
		want: settings{image: DefaultImage, required: "TEST_DATABASE_REQUIRED=1"},
	}, {
		name: "required in code; the environment cannot switch it off",
		code: Config{Required: true},
		env:  map[string]string{EnvRequired: "0"},
		want: settings{image: DefaultImage, required: fromCodeRequired},
	}, {
		name: "required by both",
		code: Config{Required: true},
		env:  map[string]string{EnvRequired: "true"},
		want: settings{image: DefaultImage, required: "TEST_DATABASE_REQUIRED=true and " + fromCodeRequired},
	}, {
		name:    "an unknown network in the environment names the variable",
		code:    code,
		env:     map[string]string{EnvNetwork: "overlay"},
		wantErr: `TEST_POSTGRES_NETWORK="overlay"`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolveSettings(tc.code, func(k string) string { return tc.env[k] })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("settings = %+v\nwant       %+v", got, tc.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{{}, {Network: "host"}, {Network: "bridge"}, {Image: "postgres:17"}} {
		if err := c.validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
	for _, c := range []Config{{Network: "overlay"}, {Network: "HOST"}, {Image: " postgres:17"}} {
		if err := c.validate(); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
}

// fakeTB records what pgtest does to a test. Fatalf and Skip end the
// calling goroutine, as testing.T's do; any method it does not define
// panics on the nil embedded TB.
type fakeTB struct {
	testing.TB
	failed, skipped bool
	out             []string
}

func (f *fakeTB) Helper()                      {}
func (f *fakeTB) Logf(format string, a ...any) { f.out = append(f.out, fmt.Sprintf(format, a...)) }
func (f *fakeTB) Fatalf(format string, a ...any) {
	f.Logf(format, a...)
	f.failed = true
	runtime.Goexit()
}
func (f *fakeTB) Skip(a ...any) {
	f.out = append(f.out, fmt.Sprint(a...))
	f.skipped = true
	runtime.Goexit()
}

// runFake runs fn with a fakeTB on a goroutine of its own, and reports
// whether fn ran to its end.
func runFake(fn func(testing.TB)) (tb *fakeTB, returned bool) {
	tb = &fakeTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(tb)
		returned = true
	}()
	<-done
	return tb, returned
}

func TestCheck(t *testing.T) {
	noEngine := "no Docker engine: DOCKER_HOST=unix:///nonexistent: no such file"
	for _, tc := range []struct {
		name                   string
		srv                    server
		failed, skipped, ended bool
		want                   []string
	}{
		{"a server: the test goes on", server{dsn: "postgres://x"}, false, false, false, nil},
		{"no server: skip", server{skip: noEngine}, false, true, true, []string{SkipMessage}},
		{"no server, required: fail", server{skip: noEngine, required: fromCodeRequired}, true, false, true,
			[]string{noEngine, SkipMessage + " (required by pgtest.Config.Required)"}},
		{"a broken server fails even when not required", server{err: fmt.Errorf("TEST_DATABASE_URL is set but unusable: refused")},
			true, false, true, []string{"pgtest: TEST_DATABASE_URL is set but unusable: refused"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb, returned := runFake(tc.srv.check)
			if tb.failed != tc.failed || tb.skipped != tc.skipped || returned == tc.ended {
				t.Fatalf("failed=%v skipped=%v returned=%v, want %v %v %v (output %q)",
					tb.failed, tb.skipped, returned, tc.failed, tc.skipped, !tc.ended, tb.out)
			}
			for _, w := range tc.want {
				if !strings.Contains(strings.Join(tb.out, "\n"), w) {
					t.Errorf("output %q lacks %q", tb.out, w)
				}
			}
		})
	}
}

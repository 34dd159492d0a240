package pgtest

import (
	"fmt"
	"strings"
)

// Config sets, in code, what the environment variables set: which server
// the package's tests use and whether a missing one fails them. Pass it to
// MainWithConfig. The zero value means "nothing set in code": every field
// then falls back to its environment variable, and that to a default.
//
// The environment wins over a field, field by field: code states the
// project's choice, an environment variable adapts it to one machine or one
// CI job (a local image, a server of its own) without editing the tests.
// Required is the exception: it is on when either Config.Required or
// TEST_DATABASE_REQUIRED=1 says so, and neither can switch the other off.
type Config struct {
	// DatabaseURL is the DSN (a libpq URL or keyword/value string) of the
	// server to use. Empty (the default) means TEST_DATABASE_URL, and when
	// that is empty too, a container. TEST_DATABASE_URL, when set, wins.
	DatabaseURL string

	// Required makes a missing server fail every test that asks for one,
	// instead of skipping it, so that CI cannot pass by skipping. False
	// (the default) leaves it to TEST_DATABASE_REQUIRED=1.
	Required bool

	// Image is the container image to run when no DSN is given. Empty (the
	// default) means TEST_POSTGRES_IMAGE, and when that is empty too,
	// DefaultImage. TEST_POSTGRES_IMAGE, when set, wins. Any image that
	// behaves like the official postgres image works (POSTGRES_USER,
	// POSTGRES_PASSWORD, POSTGRES_DB; extra arguments passed to postgres).
	Image string

	// Network is the container's network mode: "host" runs it on the host
	// network, PostgreSQL listening on a free port of 127.0.0.1; "bridge"
	// is testcontainers' default networking with a mapped port. Empty (the
	// default) means TEST_POSTGRES_NETWORK, and when that is empty too,
	// "bridge". TEST_POSTGRES_NETWORK, when set, wins.
	Network string
}

// validate checks the fields that can be wrong on their own.
func (c Config) validate() error {
	if err := checkNetwork("pgtest.Config.Network", c.Network); err != nil {
		return err
	}
	if strings.TrimSpace(c.Image) != c.Image {
		return fmt.Errorf("pgtest.Config.Image %q has surrounding spaces", c.Image)
	}
	return nil
}

func checkNetwork(from, mode string) error {
	switch mode {
	case "", "host", "bridge", "default":
		return nil
	}
	return fmt.Errorf("%s=%q: want \"host\", \"bridge\" or empty", from, mode)
}

// Where each setting came from, as error and log messages name it.
const (
	fromCodeDSN      = "pgtest.Config.DatabaseURL"
	fromCodeRequired = "pgtest.Config.Required"
)

// settings are the effective settings of one test binary.
type settings struct {
	dsn      string // server to use; empty: a container
	dsnFrom  string // EnvDatabaseURL or fromCodeDSN
	required string // what makes a missing server a failure; empty: nothing
	image    string // container image
	host     bool   // container on the host network
}

// resolveSettings merges the code configuration with the environment
// (read through getenv), as Config documents.
func resolveSettings(c Config, getenv func(string) string) (settings, error) {
	var s settings
	switch {
	case getenv(EnvDatabaseURL) != "":
		s.dsn, s.dsnFrom = getenv(EnvDatabaseURL), EnvDatabaseURL
	case c.DatabaseURL != "":
		s.dsn, s.dsnFrom = c.DatabaseURL, fromCodeDSN
	}

	var by []string
	if envTrue(getenv(EnvRequired)) {
		by = append(by, EnvRequired+"="+getenv(EnvRequired))
	}
	if c.Required {
		by = append(by, fromCodeRequired)
	}
	s.required = strings.Join(by, " and ")

	s.image = DefaultImage
	if img := getenv(EnvImage); img != "" {
		s.image = img
	} else if c.Image != "" {
		s.image = c.Image
	}

	network, from := c.Network, "pgtest.Config.Network"
	if env := getenv(EnvNetwork); env != "" {
		network, from = env, EnvNetwork
	}
	if err := checkNetwork(from, network); err != nil {
		return settings{}, err
	}
	s.host = network == "host"
	return s, nil
}

func envTrue(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "1", "true", "yes", "on":
		return true
	}
	return false
}

package guardtest_test

import (
	"testing"

	"github.com/effectonce/effectonce/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

package main

import (
	"golang.org/x/tools/go/analysis/singlechecker"

	"github.com/effectonce/effectonce/analysis/keyclock"
)

func main() { singlechecker.Main(keyclock.Analyzer) }

// Package examples holds runnable demonstrations of effectonce, one
// directory each. Run one with, for instance:
//
//	go run ./examples/incident
//
// This package itself contains documentation only.
package examples

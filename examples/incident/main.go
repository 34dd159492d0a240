// Command incident replays an incident in which an external side effect
// (a charge, an email) would have happened twice, and shows effectonce
// making it happen once.
package main

import "fmt"

func main() {
	fmt.Println("incident replay: not yet implemented (lands with the examples issue)")
}

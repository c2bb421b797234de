// Command gen writes the generated deployment files (see package
// deploy/internal/gen). Run it with `go generate ./deploy` from the
// repository root.
package main

import (
	"fmt"
	"os"

	"github.com/brownie/brownie-sidecar/deploy/internal/gen"
)

func main() {
	changed, err := gen.Write(".")
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	for _, p := range changed {
		fmt.Println("deploy/" + p)
	}
}

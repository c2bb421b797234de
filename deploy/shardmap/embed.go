// Package shardmap holds the shard map of the Brownie schema, for the
// development stack and as the template for deployments.
package shardmap

import _ "embed"

// Brownie is deploy/shardmap/brownie.yaml: the Brownie metadata schema on
// the two shards of the development stack.
//
//go:embed brownie.yaml
var Brownie []byte

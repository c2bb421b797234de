// Package router decides where a session or statement goes. It is pure and
// synchronous: (session facts, statement) → target. It opens no sockets and
// starts no goroutines. The shard map is an immutable snapshot behind an
// atomic pointer, swapped whole on reload.
//
// Until team routing exists, every session routes to the primary of the
// first shard.
package router

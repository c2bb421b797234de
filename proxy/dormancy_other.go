//go:build !linux

package proxy

import (
	"net"

	"go.uber.org/zap"
)

// dormancy is the Linux epoll holder of goroutine-less dormant sessions
// (dormancy_linux.go); elsewhere dormant sessions keep a goroutine.
type dormancy struct {
	log  *zap.Logger
	wake func(parked)
}

type parked struct {
	ss   *session
	conn net.Conn
}

func (d *dormancy) park(*session, net.Conn) bool { return false }
func (d *dormancy) unpark(*session) bool         { return false }
func (d *dormancy) stop()                        {}

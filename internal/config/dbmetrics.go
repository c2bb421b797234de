package config

import (
	"fmt"
	"time"
)

// DBMetrics configures the database metrics (package dbmetrics): one
// sidecar of the cluster, elected with an advisory lock on the first
// shard's primary, counts the Brownie entities and reads the database
// sizes and connection states of every shard primary each Interval.
type DBMetrics struct {
	// Interval is the period of a collection; 0 (the default) turns the
	// database metrics off.
	Interval time.Duration `env:"DB_METRICS_INTERVAL"`
	// QueryTimeout bounds each connection attempt and each query of a
	// collection; a shard whose query times out counts as failed.
	QueryTimeout time.Duration `env:"DB_METRICS_QUERY_TIMEOUT" envDefault:"5s"`
}

// Enabled reports whether the database metrics are collected.
func (d DBMetrics) Enabled() bool { return d.Interval > 0 }

// validate returns one error per problem, each naming its variable.
func (d DBMetrics) validate() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if d.Interval < 0 {
		add("DB_METRICS_INTERVAL must not be negative (0 or unset turns the database metrics off)")
	} else if d.Interval > 0 && d.Interval < time.Second {
		add("DB_METRICS_INTERVAL %s is below 1s", d.Interval)
	}
	if d.QueryTimeout <= 0 {
		add("DB_METRICS_QUERY_TIMEOUT must be positive")
	} else if d.Enabled() && d.QueryTimeout > d.Interval {
		add("DB_METRICS_QUERY_TIMEOUT %s is longer than DB_METRICS_INTERVAL %s", d.QueryTimeout, d.Interval)
	}
	return errs
}

package tls

import "time"

// Refresh policy constants. The functions below are pure: they take the
// time, the lifetime and the jitter as arguments, so they are tested without
// a clock.
const (
	// jitterFraction spreads scheduled refreshes and retries by up to ±10%
	// so that many sidecars do not hit Vault in lockstep.
	jitterFraction = 0.10
	// retryBase is the first retry delay after a failed refresh; it doubles
	// per consecutive failure up to retryCap.
	retryBase = time.Second
	// maxRetryCap is the longest retry delay, whatever the lifetime.
	maxRetryCap = 30 * time.Second
	// minRetryCap keeps retries of very short-lived certificates from
	// spinning; the rate limiter is the hard floor.
	minRetryCap = time.Second
)

// effectiveBuffer returns the refresh buffer used for a certificate with the
// given lifetime: the configured buffer, but never more than two thirds of
// the lifetime, so a certificate is used for at least a third of its life
// even when it is shorter than the buffer (a 20s certificate with the default
// 5m buffer is refreshed after about 6.7s, not in a loop).
func effectiveBuffer(lifetime, buffer time.Duration) time.Duration {
	if lifetime <= 0 || buffer <= 0 {
		return 0
	}
	return min(buffer, lifetime*2/3)
}

// refreshAt returns when to refresh a certificate obtained at fetched and
// valid until notAfter: at half of the remaining lifetime, but no later
// than notAfter minus the effective buffer. Jitter (in [-1, 1]) moves the
// delay by up to ±10%, only downwards when the buffer bound applies, so the
// result is never later than that bound and never before fetched. A
// certificate already expired at fetched is due at fetched. It is a pure
// function.
func refreshAt(fetched, notAfter time.Time, buffer time.Duration, jitter float64) time.Time {
	lifetime := notAfter.Sub(fetched)
	if lifetime <= 0 {
		return fetched
	}
	latest := lifetime - effectiveBuffer(lifetime, buffer)
	base := min(lifetime/2, latest)
	spread := time.Duration(float64(base) * jitterFraction * clampUnit(jitter))
	delay := base + spread
	if delay > latest {
		delay = base - spread
	}
	return fetched.Add(max(delay, 0))
}

// retryDelay returns how long to wait after the failures-th consecutive
// failed refresh (failures >= 1) of a certificate whose lifetime is
// lifetime (0 if unknown). The delay starts at one second and doubles, capped
// at a quarter of the lifetime clamped to [1s, 30s], so short-lived
// certificates are retried often enough to be replaced before they expire;
// jitter (in [-1, 1]) moves it by up to ±10%. It is a pure function.
func retryDelay(failures int, lifetime time.Duration, jitter float64) time.Duration {
	limit := maxRetryCap
	if lifetime > 0 {
		limit = min(max(lifetime/4, minRetryCap), maxRetryCap)
	}
	d := retryBase
	for i := 1; i < failures && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	return d + time.Duration(float64(d)*jitterFraction*clampUnit(jitter))
}

// kvPollDelay returns how long to wait before the next read of a KV bundle
// whose certificate is valid until notAfter (zero if none is held): the poll
// interval, but sooner while the certificate nears its end (half of the
// remaining time, at least one second), since a replacement is then
// expected. It is a pure function.
func kvPollDelay(now, notAfter time.Time, poll time.Duration) time.Duration {
	if notAfter.IsZero() {
		return poll
	}
	if half := notAfter.Sub(now) / 2; half < poll {
		return max(half, time.Second)
	}
	return poll
}

// tokenRenewAt returns when to act on a Vault token obtained at obtained
// with lease ttl: at two thirds of the lease, moved by up to ±10% by jitter
// (in [-1, 1]). A zero ttl (a token that never expires) gives the zero time.
// It is a pure function.
func tokenRenewAt(obtained time.Time, ttl time.Duration, jitter float64) time.Time {
	if ttl <= 0 {
		return time.Time{}
	}
	d := ttl * 2 / 3
	d += time.Duration(float64(d) * jitterFraction * clampUnit(jitter))
	return obtained.Add(d)
}

func clampUnit(x float64) float64 {
	return min(max(x, -1), 1)
}

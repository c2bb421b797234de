package tls

import (
	"context"
	"crypto"
	"crypto/sha256"
	cryptotls "crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// Defaults applied by NewFileSource to zero FileConfig fields.
const (
	DefaultCertFile     = "client.crt"
	DefaultKeyFile      = "client.key"
	DefaultCAFile       = "ca.crt"
	DefaultDebounce     = 200 * time.Millisecond
	DefaultPollInterval = 30 * time.Second
)

// FileConfig configures a FileSource. The zero value of every field except
// Dir selects a default.
type FileConfig struct {
	// Dir is the certificate directory (LOCAL_CERT_DIR). It is watched, not
	// the files, because Kubernetes swaps secrets by renaming a symlink.
	Dir string
	// CertFile is the client certificate chain, relative to Dir unless
	// absolute. Default "client.crt".
	CertFile string
	// KeyFile is the client private key (PKCS#1, PKCS#8 or EC), relative to
	// Dir unless absolute. Default "client.key".
	KeyFile string
	// CAFile holds the CA certificates that verify the upstream server,
	// relative to Dir unless absolute. Default "ca.crt". It is required
	// unless NoCA is set.
	CAFile string
	// NoCA reads no CA file: the source serves a certificate that verifies
	// no peer, such as a server certificate from a Kubernetes TLS Secret
	// (tls.crt, tls.key). Bundle.Roots and Bundle.CAs are then empty.
	NoCA bool
	// Debounce coalesces bursts of file events before a reload. Default
	// 200ms.
	Debounce time.Duration
	// PollInterval is the fallback reload period for filesystems that drop
	// events. Default 30s.
	PollInterval time.Duration
	// Now is the clock, for tests. Default time.Now.
	Now func() time.Time
}

// FileSource serves a client certificate read from files and reloads it when
// they change. It is safe for concurrent use. The bundle in use is only ever
// replaced by a pair that parses, whose key matches, and whose CA file parses;
// a bad pair on disk leaves the previous bundle in place.
type FileSource struct {
	cfg                       FileConfig
	certPath, keyPath, caPath string
	log                       *zap.Logger

	current  atomic.Pointer[Bundle]
	reloadMu sync.Mutex  // serialises Reload
	watching atomic.Bool // Run has its watcher in place; for tests

	mu     sync.Mutex // guards status and publishing current together
	status Status
}

var _ Source = (*FileSource)(nil)

// NewFileSource loads the certificate, key and CA from cfg.Dir synchronously
// and returns a source serving them. It fails if a file is missing or
// malformed, if the key does not match the certificate, or if the CA file
// does not parse. An expired or not yet valid certificate does not fail: it is
// loaded and reported through Status, and callers check Bundle.ValidAt before
// dialing. A nil log discards logs. Call Run to follow changes.
func NewFileSource(cfg FileConfig, log *zap.Logger) (*FileSource, error) {
	if cfg.Dir == "" {
		return nil, errors.New("file source: dir is required")
	}
	if cfg.CertFile == "" {
		cfg.CertFile = DefaultCertFile
	}
	if cfg.KeyFile == "" {
		cfg.KeyFile = DefaultKeyFile
	}
	if cfg.CAFile == "" {
		cfg.CAFile = DefaultCAFile
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = DefaultDebounce
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if log == nil {
		log = zap.NewNop()
	}
	s := &FileSource{
		cfg:      cfg,
		certPath: resolve(cfg.Dir, cfg.CertFile),
		keyPath:  resolve(cfg.Dir, cfg.KeyFile),
		caPath:   resolve(cfg.Dir, cfg.CAFile),
		log:      log,
		status:   Status{Source: "file"},
	}
	if err := s.Reload(); err != nil && s.current.Load() == nil {
		return nil, err
	}
	return s, nil
}

func resolve(dir, name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(dir, name)
}

// Current returns the bundle in use. It never blocks and does no I/O.
func (s *FileSource) Current() (*Bundle, error) {
	if b := s.current.Load(); b != nil {
		return b, nil
	}
	return nil, ErrNoCertificate
}

// GetClientCertificate returns the certificate in use for crypto/tls. It only
// reads an atomic pointer. It does not check validity: an expired certificate
// is still offered, and callers check Bundle.ValidAt before dialing.
func (s *FileSource) GetClientCertificate(*cryptotls.CertificateRequestInfo) (*cryptotls.Certificate, error) {
	if b := s.current.Load(); b != nil {
		return &b.Certificate, nil
	}
	return nil, ErrNoCertificate
}

// GetCertificate returns the certificate in use for a crypto/tls server
// (tls.Config.GetCertificate), so a server presents a rotated certificate
// from its next handshake on. It only reads an atomic pointer and does not
// check validity.
func (s *FileSource) GetCertificate(*cryptotls.ClientHelloInfo) (*cryptotls.Certificate, error) {
	if b := s.current.Load(); b != nil {
		return &b.Certificate, nil
	}
	return nil, ErrNoCertificate
}

// Status reports the bundle in use and the reload history. It is safe for
// concurrent use.
func (s *FileSource) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status.clone()
}

// Reload reads the files once and swaps the bundle in use if they hold a new,
// acceptable pair. Identical content is a no-op that keeps the generation. A
// pair that is not valid at the current time is rejected while the bundle in
// use is valid, and taken otherwise (so operators see the newest one). Reload
// returns a *CertError when the files were rejected or when the bundle now in
// use is not valid; the same error is recorded in Status. It is safe for
// concurrent use; calls are serialised.
func (s *FileSource) Reload() error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()

	now := s.cfg.Now()
	old := s.current.Load()
	next, err := s.load()
	if err != nil {
		s.reject(now, err)
		return err
	}
	if old != nil && old.fingerprint == next.fingerprint {
		err := old.ValidAt(now)
		s.record(now, err, nil)
		s.warnInvalid(old, err)
		return err
	}
	validErr := next.ValidAt(now)
	if validErr != nil && old != nil && old.ValidAt(now) == nil {
		s.reject(now, validErr)
		return validErr
	}

	next.Generation = 1
	if old != nil {
		next.Generation = old.Generation + 1
	}
	s.record(now, validErr, next)
	if old == nil {
		s.log.Info("certificate loaded",
			zap.String("path", s.certPath),
			zap.String("serial", next.Serial),
			zap.Time("not_before", next.NotBefore),
			zap.Time("not_after", next.NotAfter),
			zap.Uint64("generation", next.Generation))
	} else {
		s.log.Info("certificate rotated",
			zap.String("path", s.certPath),
			zap.String("old_serial", old.Serial),
			zap.String("new_serial", next.Serial),
			zap.Time("old_not_after", old.NotAfter),
			zap.Time("new_not_after", next.NotAfter),
			zap.Uint64("generation", next.Generation))
	}
	s.warnInvalid(next, validErr)
	return validErr
}

// record notes an attempt and, if next is not nil, publishes it.
func (s *FileSource) record(now time.Time, err error, next *Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.status
	st.LastAttempt = now
	st.LastError, st.LastErrorReason = "", ""
	if err != nil {
		st.LastError, st.LastErrorReason = err.Error(), reasonOf(err)
		st.countFailure(st.LastErrorReason)
	}
	if next == nil {
		return
	}
	if s.current.Swap(next) != nil {
		st.Rotations++
	}
	st.Serial, st.NotBefore, st.NotAfter = next.Serial, next.NotBefore, next.NotAfter
	st.Generation = next.Generation
}

// reject records and logs a failed attempt that keeps the bundle in use.
func (s *FileSource) reject(now time.Time, err error) {
	s.record(now, err, nil)
	path := s.certPath
	var ce *CertError
	if errors.As(err, &ce) && ce.path != "" {
		path = ce.path
	}
	s.log.Warn("certificate reload failed",
		zap.String("path", path),
		zap.String("reason", reasonOf(err)),
		zap.Error(err))
}

func (s *FileSource) warnInvalid(b *Bundle, err error) {
	if err == nil {
		return
	}
	s.log.Warn("certificate not valid",
		zap.String("path", s.certPath),
		zap.String("serial", b.Serial),
		zap.String("reason", reasonOf(err)),
		zap.Time("not_before", b.NotBefore),
		zap.Time("not_after", b.NotAfter))
}

func reasonOf(err error) string {
	var ce *CertError
	if errors.As(err, &ce) {
		return ce.Reason
	}
	return ReasonRead
}

// load reads and validates the three files into a new, unpublished bundle.
func (s *FileSource) load() (*Bundle, error) {
	certPEM, err := readFile("client certificate", s.certPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readFile("client key", s.keyPath)
	if err != nil {
		return nil, err
	}
	var caPEM []byte
	if !s.cfg.NoCA {
		if caPEM, err = readFile("CA certificate", s.caPath); err != nil {
			return nil, err
		}
	}

	chain, err := parseCertificates(certPEM)
	if err != nil {
		return nil, &CertError{Reason: ReasonParse, path: s.certPath,
			Msg: fmt.Sprintf("parse client certificate %s: %v", s.certPath, err)}
	}
	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		return nil, &CertError{Reason: ReasonParse, path: s.keyPath,
			Msg: fmt.Sprintf("parse client key %s: %v", s.keyPath, err)}
	}
	leaf := chain[0]
	serial := leaf.SerialNumber.Text(16)
	if !publicKeysMatch(leaf, key) {
		return nil, &CertError{Reason: ReasonMismatch, path: s.keyPath,
			Msg: fmt.Sprintf("client key %s does not match certificate %s (serial %s)", s.keyPath, s.certPath, serial)}
	}
	var cas []*x509.Certificate
	if !s.cfg.NoCA {
		if cas, err = parseCertificates(caPEM); err != nil {
			return nil, &CertError{Reason: ReasonCA, path: s.caPath,
				Msg: fmt.Sprintf("parse CA certificate %s: %v", s.caPath, err)}
		}
	}
	der := make([][]byte, len(chain))
	for i, c := range chain {
		der[i] = c.Raw
	}
	b := newBundle(der, key, leaf, cas)
	b.fingerprint = fingerprint(certPEM, keyPEM, caPEM)
	return b, nil
}

// newBundle assembles a bundle presenting the DER chain der (leaf first)
// with key, trusting cas for the upstream server.
func newBundle(der [][]byte, key crypto.PrivateKey, leaf *x509.Certificate, cas []*x509.Certificate) *Bundle {
	roots := x509.NewCertPool()
	for _, c := range cas {
		roots.AddCert(c)
	}
	return &Bundle{
		Certificate: cryptotls.Certificate{Certificate: der, PrivateKey: key, Leaf: leaf},
		Leaf:        leaf,
		Roots:       roots,
		CAs:         cas,
		Serial:      leaf.SerialNumber.Text(16),
		NotBefore:   leaf.NotBefore,
		NotAfter:    leaf.NotAfter,
	}
}

// fingerprint hashes the files with length prefixes so that moving bytes
// between files changes the result.
func fingerprint(files ...[]byte) [32]byte {
	h := sha256.New()
	for _, f := range files {
		_ = binary.Write(h, binary.BigEndian, uint64(len(f)))
		h.Write(f)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// Run reloads on changes in the directories holding the files, debounced by
// cfg.Debounce, and every cfg.PollInterval as a fallback. If the watcher
// cannot be set up it logs "certificate watch unavailable" and polls only.
// Reload failures are logged and recorded in Status, never returned. Run
// returns nil when ctx ends, after closing the watcher; it is safe to call
// once per source.
func (s *FileSource) Run(ctx context.Context) error {
	var events <-chan fsnotify.Event
	var errs <-chan error
	w, err := s.watch()
	if err != nil {
		s.log.Warn("certificate watch unavailable", zap.String("dir", s.cfg.Dir), zap.Error(err))
	} else {
		defer w.Close()
		events, errs = w.Events, w.Errors
		s.watching.Store(true)
		defer s.watching.Store(false)
	}

	debounce := time.NewTimer(s.cfg.Debounce)
	debounce.Stop()
	defer debounce.Stop()
	poll := time.NewTicker(s.cfg.PollInterval)
	defer poll.Stop()

	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			debounce.Reset(s.cfg.Debounce)
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			s.log.Warn("certificate watch error", zap.String("dir", s.cfg.Dir), zap.Error(err))
		case <-debounce.C:
			_ = s.Reload() // recorded in Status and logged
		case <-poll.C:
			_ = s.Reload()
		}
	}
}

// watch returns a watcher on every directory holding one of the files.
func (s *FileSource) watch() (*fsnotify.Watcher, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	paths := []string{s.certPath, s.keyPath}
	if !s.cfg.NoCA {
		paths = append(paths, s.caPath)
	}
	for _, p := range paths {
		dir := filepath.Dir(p)
		if seen[dir] {
			continue
		}
		seen[dir] = true
		if err := w.Add(dir); err != nil {
			w.Close()
			return nil, fmt.Errorf("watch %s: %w", dir, err)
		}
	}
	return w, nil
}

package config

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// Backup providers (BACKUP_PROVIDER). The empty value disables backups.
const (
	BackupLocal = "local"
	BackupS3    = "s3"
	BackupGCS   = "gcs"
	BackupAzure = "azure"
)

// BackupScheduleOff is the BACKUP_SCHEDULE value that disables scheduled
// backups; backups can still be created through the admin API.
const BackupScheduleOff = "off"

// BackupScheduleParser parses BACKUP_SCHEDULE: five cron fields (minute hour
// day-of-month month day-of-week), an optional leading seconds field,
// descriptors such as @daily or @every 6h, and an optional CRON_TZ=Zone
// prefix; without the prefix the schedule is in UTC. It is safe for
// concurrent use.
var BackupScheduleParser = cron.NewParser(
	cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor,
)

// Backup configures backups of every shard (package backup). Secrets are of
// type Secret so that printing the configuration does not reveal them.
type Backup struct {
	// Provider is local, s3, gcs or azure; empty disables backups.
	Provider string `env:"BACKUP_PROVIDER"`
	// Destination is a directory for local, and "bucket" or
	// "bucket/prefix" (container/prefix for azure) for the clouds; a
	// leading s3://, gs:// or azblob:// is accepted.
	Destination string `env:"BACKUP_DESTINATION"`

	// AccessKey and SecretKey are static S3 credentials; without them the
	// AWS SDK's default credential chain is used.
	AccessKey string `env:"BACKUP_ACCESS_KEY"`
	SecretKey Secret `env:"BACKUP_SECRET_KEY"`
	// Endpoint overrides the service URL: an S3-compatible endpoint for s3
	// (MinIO, versitygw...), the JSON API base URL for gcs, the blob service
	// URL (including the account, e.g. Azurite's
	// http://127.0.0.1:10000/devstoreaccount1) for azure.
	Endpoint string `env:"BACKUP_ENDPOINT"`
	Region   string `env:"BACKUP_REGION" envDefault:"us-east-1"`
	// S3ForcePathStyle addresses buckets as endpoint/bucket instead of
	// bucket.endpoint, as most S3-compatible stores need.
	S3ForcePathStyle bool `env:"BACKUP_S3_FORCE_PATH_STYLE"`

	// GCSEmulatorHost is host:port of a GCS emulator (the variable Google's
	// libraries use); it is reached over plain HTTP without credentials.
	// Otherwise gcs uses Application Default Credentials.
	GCSEmulatorHost string `env:"STORAGE_EMULATOR_HOST"`

	// AzureAccount and AzureKey are a storage account's shared key; the
	// connection string, when set, replaces both (and the endpoint).
	// Without a key, azure uses the Azure SDK's default credential chain.
	AzureAccount          string `env:"AZURE_STORAGE_ACCOUNT"`
	AzureKey              Secret `env:"AZURE_STORAGE_KEY"`
	AzureConnectionString Secret `env:"AZURE_STORAGE_CONNECTION_STRING"`

	// Schedule is when scheduled backups run (see BackupScheduleParser), or
	// "off".
	Schedule string `env:"BACKUP_SCHEDULE" envDefault:"0 2 * * *"`
	// RetentionDays: after a successful backup, complete backups started
	// more than this many days ago are deleted; 0 keeps every backup.
	RetentionDays int `env:"BACKUP_RETENTION_DAYS" envDefault:"30"`
	// Concurrency bounds how many shards are dumped, verified or restored
	// at once.
	Concurrency int `env:"BACKUP_CONCURRENCY" envDefault:"2"`
	// Timeout bounds one backup or one restore.
	Timeout time.Duration `env:"BACKUP_TIMEOUT" envDefault:"4h"`
	// CompressionLevel is pg_dump's --compress (0-9); -1 leaves pg_dump's
	// default.
	CompressionLevel int `env:"BACKUP_COMPRESSION_LEVEL" envDefault:"-1"`
	// PGBinDir holds pg_dump and pg_restore; empty searches PATH. They must
	// be at least as new as the servers.
	PGBinDir string `env:"BACKUP_PG_BIN_DIR"`
	// TempDir is where the private, short-lived directory holding the
	// client certificate for pg_dump and pg_restore is made; empty is the
	// system default.
	TempDir string `env:"BACKUP_TEMP_DIR"`
	// Worker is the backup worker program (brownie-backup), which runs
	// every backup, restore and listing in a process of its own; empty is
	// brownie-backup in the directory of the sidecar's executable.
	Worker string `env:"BACKUP_WORKER"`
}

// Enabled reports whether backups are configured.
func (b Backup) Enabled() bool { return b.Provider != "" }

// Scheduled reports whether scheduled backups run.
func (b Backup) Scheduled() bool {
	return b.Enabled() && !strings.EqualFold(strings.TrimSpace(b.Schedule), BackupScheduleOff)
}

// validate returns one error per problem, each naming its variable.
func (b Backup) validate() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if s := strings.TrimSpace(b.Schedule); !strings.EqualFold(s, BackupScheduleOff) {
		if _, err := BackupScheduleParser.Parse(s); err != nil {
			add("BACKUP_SCHEDULE %q is not a cron schedule or %q: %v", b.Schedule, BackupScheduleOff, err)
		}
	}
	if b.RetentionDays < 0 {
		add("BACKUP_RETENTION_DAYS must not be negative (0 keeps every backup)")
	}
	if b.Concurrency < 1 {
		add("BACKUP_CONCURRENCY must be at least 1")
	}
	if b.Timeout <= 0 {
		add("BACKUP_TIMEOUT must be positive")
	}
	if b.CompressionLevel < -1 || b.CompressionLevel > 9 {
		add("BACKUP_COMPRESSION_LEVEL must be between 0 and 9, or -1 for pg_dump's default")
	}
	if !b.Enabled() {
		return errs
	}

	switch b.Provider {
	case BackupLocal, BackupS3, BackupGCS, BackupAzure:
	default:
		add("BACKUP_PROVIDER %q is not one of local, s3, gcs, azure (or empty to disable backups)", b.Provider)
		return errs
	}
	if strings.TrimSpace(b.Destination) == "" {
		add("BACKUP_DESTINATION must be set when BACKUP_PROVIDER is set")
	} else if b.Provider != BackupLocal {
		if bucket, prefix := SplitBackupDestination(b.Destination); bucket == "" {
			add("BACKUP_DESTINATION %q must start with a bucket name", b.Destination)
		} else if hasDotSegment(prefix) {
			add("BACKUP_DESTINATION %q must not contain . or .. path segments", b.Destination)
		}
	}
	if b.Endpoint != "" && b.AzureConnectionString == "" {
		if u, err := url.Parse(b.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add("BACKUP_ENDPOINT %q is not an http or https URL", b.Endpoint)
		}
	}
	switch b.Provider {
	case BackupS3:
		if (b.AccessKey == "") != (b.SecretKey == "") {
			add("BACKUP_ACCESS_KEY and BACKUP_SECRET_KEY must be set together")
		}
		if b.Region == "" {
			add("BACKUP_REGION must not be empty for BACKUP_PROVIDER=s3")
		}
	case BackupGCS:
		if b.GCSEmulatorHost != "" {
			if _, _, err := net.SplitHostPort(b.GCSEmulatorHost); err != nil {
				add("STORAGE_EMULATOR_HOST %q is not host:port: %v", b.GCSEmulatorHost, err)
			}
		}
	case BackupAzure:
		if b.AzureConnectionString == "" && b.AzureAccount == "" && b.Endpoint == "" {
			add("BACKUP_PROVIDER=azure needs AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCOUNT or BACKUP_ENDPOINT")
		}
		if b.AzureKey != "" && b.AzureAccount == "" && b.AzureConnectionString == "" {
			add("AZURE_STORAGE_KEY needs AZURE_STORAGE_ACCOUNT")
		}
	}
	return errs
}

// SplitBackupDestination splits a cloud BACKUP_DESTINATION into the bucket
// (or Azure container) and the key prefix, without surrounding slashes. A
// leading scheme (s3://, gs://, azblob://) is dropped.
func SplitBackupDestination(dest string) (bucket, prefix string) {
	dest = strings.TrimSpace(dest)
	if _, rest, ok := strings.Cut(dest, "://"); ok {
		dest = rest
	}
	dest = strings.Trim(dest, "/")
	bucket, prefix, _ = strings.Cut(dest, "/")
	return bucket, strings.Trim(prefix, "/")
}

func hasDotSegment(p string) bool {
	for seg := range strings.SplitSeq(p, "/") {
		if seg == "." || seg == ".." {
			return true
		}
	}
	return false
}

package config_test

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/brownie/brownie-sidecar/internal/config"
)

// backupDefaults is config.Backup from an empty environment: backups off.
var backupDefaults = config.Backup{
	Region:           "us-east-1",
	Schedule:         "0 2 * * *",
	RetentionDays:    30,
	Concurrency:      2,
	Timeout:          4 * time.Hour,
	CompressionLevel: -1,
}

// load is config.Load with the admin port on loopback, so that only the
// backup variables under test can make the configuration invalid.
func load(env map[string]string) (config.Config, error) {
	full := map[string]string{"ADMIN_ADDR": "127.0.0.1:8001"}
	for k, v := range env {
		full[k] = v
	}
	return config.Load(full)
}

func TestBackupsAreOffByDefault(t *testing.T) {
	cfg, err := load(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Backup.Enabled() || cfg.Backup.Scheduled() {
		t.Errorf("backups enabled by default: %+v", cfg.Backup)
	}
}

func TestLoadReadsEveryBackupVariable(t *testing.T) {
	cfg, err := load(map[string]string{
		"BACKUP_PROVIDER":                 "s3",
		"BACKUP_DESTINATION":              "s3://brownie-backups/prod/cluster-1/",
		"BACKUP_ACCESS_KEY":               "AKIA",
		"BACKUP_SECRET_KEY":               "s3cr3t",
		"BACKUP_ENDPOINT":                 "http://127.0.0.1:7070",
		"BACKUP_REGION":                   "eu-west-1",
		"BACKUP_S3_FORCE_PATH_STYLE":      "true",
		"STORAGE_EMULATOR_HOST":           "127.0.0.1:4443",
		"AZURE_STORAGE_ACCOUNT":           "acct",
		"AZURE_STORAGE_KEY":               "a2V5",
		"AZURE_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=https",
		"BACKUP_SCHEDULE":                 "30 3 * * 0",
		"BACKUP_RETENTION_DAYS":           "7",
		"BACKUP_CONCURRENCY":              "4",
		"BACKUP_TIMEOUT":                  "1h",
		"BACKUP_COMPRESSION_LEVEL":        "1",
		"BACKUP_PG_BIN_DIR":               "/usr/lib/postgresql/16/bin",
		"BACKUP_TEMP_DIR":                 "/run/brownie",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := config.Backup{
		Provider: "s3", Destination: "s3://brownie-backups/prod/cluster-1/",
		AccessKey: "AKIA", SecretKey: "s3cr3t", Endpoint: "http://127.0.0.1:7070", Region: "eu-west-1",
		S3ForcePathStyle: true, GCSEmulatorHost: "127.0.0.1:4443",
		AzureAccount: "acct", AzureKey: "a2V5", AzureConnectionString: "DefaultEndpointsProtocol=https",
		Schedule: "30 3 * * 0", RetentionDays: 7, Concurrency: 4, Timeout: time.Hour, CompressionLevel: 1,
		PGBinDir: "/usr/lib/postgresql/16/bin", TempDir: "/run/brownie",
	}
	if !reflect.DeepEqual(cfg.Backup, want) {
		t.Errorf("Backup:\n got %+v\nwant %+v", cfg.Backup, want)
	}
	if bucket, prefix := config.SplitBackupDestination(cfg.Backup.Destination); bucket != "brownie-backups" || prefix != "prod/cluster-1" {
		t.Errorf("SplitBackupDestination = %q, %q", bucket, prefix)
	}
	if s := fmt.Sprintf("%v %+v", cfg.Backup, cfg.Backup); strings.Contains(s, "s3cr3t") || strings.Contains(s, "a2V5") || strings.Contains(s, "DefaultEndpoints") {
		t.Errorf("printing the configuration shows a secret: %s", s)
	}
}

func TestScheduleOffKeepsBackupsOnDemand(t *testing.T) {
	cfg, err := load(map[string]string{
		"BACKUP_PROVIDER": "local", "BACKUP_DESTINATION": "/var/backups/brownie", "BACKUP_SCHEDULE": "off",
	})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Backup.Enabled() || cfg.Backup.Scheduled() {
		t.Errorf("Enabled %v Scheduled %v", cfg.Backup.Enabled(), cfg.Backup.Scheduled())
	}
	for _, spec := range []string{"@daily", "0 */6 * * *", "*/30 * * * * *", "CRON_TZ=Europe/Paris 0 2 * * *"} {
		if _, err := load(map[string]string{"BACKUP_SCHEDULE": spec}); err != nil {
			t.Errorf("BACKUP_SCHEDULE=%q: %v", spec, err)
		}
	}
}

func TestInvalidBackupSettingsNameTheirVariables(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want []string
	}{
		{map[string]string{"BACKUP_PROVIDER": "ftp", "BACKUP_DESTINATION": "x"}, []string{"BACKUP_PROVIDER"}},
		{map[string]string{"BACKUP_PROVIDER": "local"}, []string{"BACKUP_DESTINATION"}},
		{map[string]string{"BACKUP_PROVIDER": "s3", "BACKUP_DESTINATION": "s3://"}, []string{"BACKUP_DESTINATION"}},
		{map[string]string{"BACKUP_PROVIDER": "s3", "BACKUP_DESTINATION": "b/../x"}, []string{"BACKUP_DESTINATION"}},
		{map[string]string{"BACKUP_PROVIDER": "s3", "BACKUP_DESTINATION": "b", "BACKUP_ACCESS_KEY": "a"}, []string{"BACKUP_ACCESS_KEY and BACKUP_SECRET_KEY"}},
		{map[string]string{"BACKUP_PROVIDER": "s3", "BACKUP_DESTINATION": "b", "BACKUP_ENDPOINT": "127.0.0.1:9000"}, []string{"BACKUP_ENDPOINT"}},
		{map[string]string{"BACKUP_PROVIDER": "s3", "BACKUP_DESTINATION": "b", "BACKUP_REGION": ""}, nil},
		{map[string]string{"BACKUP_PROVIDER": "gcs", "BACKUP_DESTINATION": "b", "STORAGE_EMULATOR_HOST": "nohostport"}, []string{"STORAGE_EMULATOR_HOST"}},
		{map[string]string{"BACKUP_PROVIDER": "azure", "BACKUP_DESTINATION": "c"}, []string{"AZURE_STORAGE_CONNECTION_STRING"}},
		{map[string]string{"BACKUP_PROVIDER": "azure", "BACKUP_DESTINATION": "c", "AZURE_STORAGE_KEY": "k", "BACKUP_ENDPOINT": "http://x"}, []string{"AZURE_STORAGE_KEY"}},
		{map[string]string{"BACKUP_SCHEDULE": "every night"}, []string{"BACKUP_SCHEDULE"}},
		{map[string]string{"BACKUP_RETENTION_DAYS": "-1"}, []string{"BACKUP_RETENTION_DAYS"}},
		{map[string]string{"BACKUP_RETENTION_DAYS": "thirty"}, []string{"BACKUP_RETENTION_DAYS"}},
		{map[string]string{"BACKUP_CONCURRENCY": "0"}, []string{"BACKUP_CONCURRENCY"}},
		{map[string]string{"BACKUP_TIMEOUT": "0s"}, []string{"BACKUP_TIMEOUT"}},
		{map[string]string{"BACKUP_COMPRESSION_LEVEL": "10"}, []string{"BACKUP_COMPRESSION_LEVEL"}},
	} {
		_, err := load(tc.env)
		if tc.want == nil {
			// An empty BACKUP_REGION takes the default: valid.
			if err != nil {
				t.Errorf("%v: %v", tc.env, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%v: accepted", tc.env)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q does not name %s", tc.env, err, w)
			}
		}
	}
}

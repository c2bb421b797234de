package worker

import (
	"github.com/brownie/brownie-sidecar/backup"

	"context"
	"errors"
	"fmt"
	"strings"

	"cloud.google.com/go/storage"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"gocloud.dev/blob"
	"gocloud.dev/blob/azureblob"
	"gocloud.dev/blob/fileblob"
	"gocloud.dev/blob/gcsblob"
	"gocloud.dev/blob/s3blob"
	"google.golang.org/api/option"

	"github.com/brownie/brownie-sidecar/internal/config"
)

// openBucket opens the configured destination with explicit options (no
// URL opener, so nothing is taken from the process environment beyond the
// clouds' own default credential chains, used only when no credentials are
// configured). The returned bucket is already restricted to the
// destination's prefix. closeFn releases the bucket and any client it
// owns; the caller must call it exactly once.
func openBucket(ctx context.Context, cfg config.Backup) (b *blob.Bucket, closeFn func() error, err error) {
	var prefix string
	closers := []func() error{}
	switch cfg.Provider {
	case config.BackupLocal:
		b, err = fileblob.OpenBucket(cfg.Destination, &fileblob.Options{
			CreateDir:   true,
			DirFileMode: 0o700,
			// Temporary files next to their destination: a rename from
			// os.TempDir would fail across file systems.
			NoTempDir: true,
			Metadata:  fileblob.MetadataDontWrite,
		})
		if err != nil {
			return nil, nil, fmt.Errorf("open local backup directory: %w", err)
		}
	case config.BackupS3:
		var bucket string
		bucket, prefix = config.SplitBackupDestination(cfg.Destination)
		b, err = openS3(ctx, cfg, bucket)
	case config.BackupGCS:
		var bucket string
		bucket, prefix = config.SplitBackupDestination(cfg.Destination)
		var client *storage.Client
		client, err = openGCSClient(ctx, cfg)
		if err == nil {
			closers = append(closers, client.Close)
			b, err = gcsblob.OpenBucket(ctx, nil, bucket, &gcsblob.Options{Client: client})
			if err != nil {
				_ = client.Close()
			}
		}
	case config.BackupAzure:
		var containerName string
		containerName, prefix = config.SplitBackupDestination(cfg.Destination)
		var client *container.Client
		client, err = openAzureContainer(cfg, containerName)
		if err == nil {
			b, err = azureblob.OpenBucket(ctx, client, nil)
		}
	case "":
		return nil, nil, backup.ErrDisabled
	default:
		return nil, nil, fmt.Errorf("unknown backup provider %q", cfg.Provider)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("open %s backup destination: %w", cfg.Provider, err)
	}
	if prefix != "" {
		b = blob.PrefixedBucket(b, prefix+"/")
	}
	closers = append([]func() error{b.Close}, closers...)
	return b, func() error {
		var errs []error
		for _, c := range closers {
			errs = append(errs, c())
		}
		return errors.Join(errs...)
	}, nil
}

// openS3 opens an S3 bucket with static credentials when configured, else
// the AWS default credential chain, and the optional endpoint override and
// path-style addressing of S3-compatible stores.
func openS3(ctx context.Context, cfg config.Backup, bucket string) (*blob.Bucket, error) {
	var awsCfg aws.Config
	if cfg.AccessKey != "" {
		awsCfg = aws.Config{
			Region: cfg.Region,
			Credentials: aws.NewCredentialsCache(
				credentials.NewStaticCredentialsProvider(cfg.AccessKey, string(cfg.SecretKey), "")),
		}
	} else {
		var err error
		awsCfg, err = awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(cfg.Region))
		if err != nil {
			return nil, fmt.Errorf("load AWS default configuration: %w", err)
		}
	}
	checksums := aws.RequestChecksumCalculationWhenSupported
	if cfg.Endpoint != "" {
		// S3-compatible stores differ in their support of the SDK's
		// default integrity headers; send them only when required.
		checksums = aws.RequestChecksumCalculationWhenRequired
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
			o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		}
		o.RequestChecksumCalculation = checksums
		o.UsePathStyle = cfg.S3ForcePathStyle
	})
	return s3blob.OpenBucket(ctx, client, bucket, &s3blob.Options{RequestChecksumCalculation: checksums})
}

// openGCSClient returns a storage client for the emulator (plain HTTP, no
// credentials), a custom endpoint, or Google with Application Default
// Credentials. The caller owns the client.
func openGCSClient(ctx context.Context, cfg config.Backup) (*storage.Client, error) {
	var opts []option.ClientOption
	switch {
	case cfg.GCSEmulatorHost != "":
		opts = append(opts, option.WithoutAuthentication(),
			option.WithEndpoint("http://"+cfg.GCSEmulatorHost+"/storage/v1/"))
	case cfg.Endpoint != "":
		opts = append(opts, option.WithEndpoint(cfg.Endpoint))
	}
	// JSON reads go to the configured endpoint; XML reads would go to
	// storage.googleapis.com whatever the endpoint.
	opts = append(opts, storage.WithJSONReads())
	return storage.NewClient(ctx, opts...)
}

// openAzureContainer returns a client for the container: from the
// connection string when set, else with the account's shared key, else
// with the Azure default credential chain.
func openAzureContainer(cfg config.Backup, containerName string) (*container.Client, error) {
	if cfg.AzureConnectionString != "" {
		c, err := container.NewClientFromConnectionString(string(cfg.AzureConnectionString), containerName, nil)
		if err != nil {
			// The parser's message may quote the string, which holds the key.
			return nil, errors.New("AZURE_STORAGE_CONNECTION_STRING is not a valid connection string")
		}
		return c, nil
	}
	serviceURL := cfg.Endpoint
	if serviceURL == "" {
		serviceURL = "https://" + cfg.AzureAccount + ".blob.core.windows.net"
	}
	containerURL := strings.TrimRight(serviceURL, "/") + "/" + containerName
	if cfg.AzureKey != "" {
		cred, err := container.NewSharedKeyCredential(cfg.AzureAccount, string(cfg.AzureKey))
		if err != nil {
			return nil, errors.New("AZURE_STORAGE_KEY is not a valid base64 account key")
		}
		return container.NewClientWithSharedKeyCredential(containerURL, cred, nil)
	}
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		return nil, fmt.Errorf("azure default credentials: %w", err)
	}
	return container.NewClient(containerURL, cred, nil)
}

package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// evictFileCache writes back path's dirty pages and drops its pages from
// the page cache (posix_fadvise POSIX_FADV_DONTNEED), so that the next
// process to map the file reads it from disk. The memory table starts each
// pooler from an executable evicted this way: its file pages then come in
// as a pod's do from its image, by faults and readahead, and not as the
// linker left them in the page cache when it wrote the file (partly in
// 2 MB folios, which a fault maps whole: about 2 MB more RSS at start for
// the same binary). Pages a running process maps are not dropped; only the
// file's cached pages are affected, and the file itself is not changed.
// Its error names the file and what failed.
func evictFileCache(path string) error {
	f, err := os.Open(path)
	if err == nil {
		defer f.Close()
		if err = f.Sync(); err == nil {
			err = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		}
	}
	if err != nil {
		return fmt.Errorf("evicting %s from the page cache: %w", path, err)
	}
	return nil
}

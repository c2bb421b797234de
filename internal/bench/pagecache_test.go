package main

import (
	"crypto/rand"
	"io"
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A file read into the page cache is resident until evictFileCache drops
// it; the file on disk is unchanged. On a disk file system (the package's
// own directory): tmpfs pages cannot be dropped.
func TestEvictFileCacheDropsTheFilesPagesOnly(t *testing.T) {
	dir, err := os.MkdirTemp(".", "pagecache-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := dir + "/file"
	data := make([]byte, 4<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(io.Discard, f); err != nil { // read: in the page cache now
		t.Fatal(err)
	}
	if got, total := residentPages(t, f); got != total {
		t.Fatalf("after reading the file, %d of its %d pages are in the page cache; want all", got, total)
	}

	if err := evictFileCache(path); err != nil {
		t.Fatalf("evictFileCache: %v", err)
	}
	if got, total := residentPages(t, f); got != 0 {
		t.Errorf("after evictFileCache, %d of the file's %d pages are still in the page cache; want none", got, total)
	}
	back, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(back) != string(data) {
		t.Error("the file's contents changed")
	}
	if err := evictFileCache(dir + "/missing"); err == nil {
		t.Error("evictFileCache of a missing file: no error")
	}
}

// residentPages reports how many of f's pages are in the page cache
// (mincore(2) on a mapping of the whole file), and how many pages it has.
func residentPages(t *testing.T, f *os.File) (resident, total int) {
	t.Helper()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	page := os.Getpagesize()
	vec := make([]byte, (len(m)+page-1)/page)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal("mincore:", errno)
	}
	for _, v := range vec {
		if v&1 != 0 {
			resident++
		}
	}
	return resident, len(vec)
}

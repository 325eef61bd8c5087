package myelin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// lockFileName is the lock file in data_dir that one process at a time
// holds (flock) while it runs infrastructure there.
const lockFileName = "myelin.lock"

// ErrDataDirInUse: another process runs on the same data directory.
var ErrDataDirInUse = errors.New("data directory in use")

// staleLockWait bounds how long a start waits for a lock whose writer has
// exited: the watcher of that process's PostgreSQL holds it until the
// cluster is down (devinfra.Postgres.StopOnExit), which takes seconds.
const staleLockWait = 2 * time.Minute

// lockDataDir takes the data directory's lock, so that a second process
// on the same directory refuses to start instead of treating the running
// one's PostgreSQL as a leftover (and stopping it) or sharing its NATS
// store. The file holds the owner's PID for the message. A lock held
// although its writer has exited belongs to that writer's PostgreSQL
// watcher, which is stopping the cluster: the start waits for it.
func lockDataDir(dir string, log *zap.Logger) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	path := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	deadline := time.Now().Add(staleLockWait)
	logged := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		pid := lockOwner(f)
		if pid > 0 && processAlive(pid) {
			f.Close()
			return nil, fmt.Errorf("%w: myelin is already running (pid %d) with data_dir %s; stop it first, or give this one another data_dir (MYELIN_DATA_DIR)", ErrDataDirInUse, pid, dir)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("%w: %s is still locked %s after its owner (pid %d) exited", ErrDataDirInUse, path, staleLockWait, pid)
		}
		if !logged {
			log.Info("waiting for the previous run's PostgreSQL to stop", zap.String("data_dir", dir), zap.Int("previous_pid", pid))
			logged = true
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		if err != nil {
			log.Warn("could not write the PID into the lock file", zap.Error(err))
		}
	}
	return f, nil
}

// lockOwner reads the PID written into the lock file, or 0.
func lockOwner(f *os.File) int {
	buf := make([]byte, 32)
	n, _ := f.ReadAt(buf, 0)
	pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil {
		return 0
	}
	return pid
}

// processAlive reports whether a process with this PID exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// unlockDataDir releases the lock (closing the file does).
func unlockDataDir(f *os.File) { _ = f.Close() }

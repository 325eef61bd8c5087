package testkit

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"
)

// EnvS3Server names the S3-compatible server binary S3 starts: versitygw
// (`make s3-server` builds it into bin/; make test sets this variable).
// Without it, S3 looks for bin/versitygw-* in the repository.
const EnvS3Server = "MYELIN_S3_SERVER"

// S3Server is a running S3-compatible server (versitygw, posix backend).
type S3Server struct {
	// Endpoint is host:port, plain HTTP.
	Endpoint  string
	AccessKey string
	SecretKey string
	Region    string
	// Dir is the directory the server keeps buckets in: one directory per
	// bucket, one file per object.
	Dir string
}

// S3 starts an S3-compatible server on a free port with a temporary
// directory for this test, and stops it when the test ends. It fails the
// test (never skips) when the server binary is missing, so that the S3
// backend's tests always run where make test runs.
func S3(t testing.TB) S3Server {
	t.Helper()
	bin, err := s3Binary()
	if err != nil {
		t.Fatalf("testkit: S3 server: %v", err)
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "buckets")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	s := S3Server{AccessKey: "myelin-test", SecretKey: "myelin-test-secret", Region: "us-east-1", Dir: root}
	var out bytes.Buffer
	for attempt := 0; ; attempt++ {
		addr := freeTCPAddr(t)
		cmd := exec.Command(bin, "--access", s.AccessKey, "--secret", s.SecretKey, "--region", s.Region,
			"--port", addr, "--quiet", "posix", root)
		out.Reset()
		cmd.Stdout, cmd.Stderr = &out, &out
		// Its own process group, so that nothing of it outlives the test.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatalf("testkit: start %s: %v", bin, err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		if err := waitListening(addr, exited); err != nil {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			if attempt < 2 {
				continue // the free port was taken in between
			}
			t.Fatalf("testkit: S3 server on %s: %v\n%s", addr, err, out.String())
		}
		t.Cleanup(func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-exited
			}
		})
		s.Endpoint = addr
		return s
	}
}

// s3Binary finds the server binary: $MYELIN_S3_SERVER, else the newest
// bin/versitygw-* of the repository around the working directory.
func s3Binary() (string, error) {
	if p := os.Getenv(EnvS3Server); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w (run make s3-server)", EnvS3Server, p, err)
		}
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			matches, _ := filepath.Glob(filepath.Join(dir, "bin", "versitygw-*"))
			if len(matches) == 0 {
				return "", fmt.Errorf("no %s set and no %s: run make s3-server", EnvS3Server, filepath.Join(dir, "bin", "versitygw-*"))
			}
			sort.Strings(matches)
			return matches[len(matches)-1], nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no %s set and no repository (go.work) around the working directory: run make s3-server", EnvS3Server)
		}
		dir = parent
	}
}

func freeTCPAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitListening waits until addr accepts connections, the process exits,
// or 30 s pass.
func waitListening(addr string, exited <-chan error) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening after 30s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

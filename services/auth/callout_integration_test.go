//go:build integration

package auth

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/allot/allot/pkg/testenv"
	"github.com/nats-io/nkeys"
)

// processServer is a nats-server running as a process of its own.
type processServer struct{ url string }

func (p processServer) ClientURL() string { return p.url }

// pinnedCalloutServer starts the pinned nats-server binary
// (ALLOT_TEST_NATS_SERVER, which make test sets to the one it built from
// the module) with JetStream and the callout blocks ServerConfig renders,
// on a free port, as an operator would run it.
func pinnedCalloutServer(t *testing.T) (processServer, ServerConfig, nkeys.KeyPair) {
	t.Helper()
	bin := os.Getenv("ALLOT_TEST_NATS_SERVER")
	if bin == "" {
		testenv.Unavailable(t, "ALLOT_TEST_NATS_SERVER names no nats-server binary (make test sets it to the pinned one)")
	}
	issuer, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := issuer.PublicKey()
	sc := ServerConfig{Issuer: pub, AuthUser: "allot-auth", AuthPassword: "pw-auth-it", SysUser: "allot-sys", SysPassword: "pw-sys-it"}
	blocks, err := sc.Render()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	dir := t.TempDir()
	conf := fmt.Sprintf("listen: \"127.0.0.1:%d\"\nserver_name: allot-it\njetstream { store_dir: %q }\n%s", port, filepath.Join(dir, "js"), blocks)
	path := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", path)
	logf, err := os.Create(filepath.Join(dir, "nats.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); _ = logf.Close() })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			_ = c.Close()
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "nats.log"))
			t.Fatalf("%s did not listen on %s within 10s:\n%s", bin, addr, b)
		}
	}
	return processServer{url: "nats://" + addr}, sc, issuer
}

// The service behaviours (keys, revocation, overrides, the role x subject
// matrix) against the pinned nats-server as a process configured for the
// callout, with the keys in the real Redis.
func TestIntegrationService(t *testing.T) {
	for _, b := range serviceBehaviours {
		t.Run(b.name, func(t *testing.T) {
			srv, sc, issuer := pinnedCalloutServer(t)
			rdb, prefix := testenv.Redis(t)
			b.fn(t, startStackOn(t, srv, sc, issuer, rdb, prefix))
		})
	}
}

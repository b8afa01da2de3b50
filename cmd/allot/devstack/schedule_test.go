package devstack

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/service"
)

// The notifier's registry refresh runs on asynq's scheduler, so asynq's
// own tooling shows it: asynqmon's scheduler entries (what `asynq cron
// ls` lists too).
func TestRefreshScheduleInAsynqmon(t *testing.T) {
	cfg := service.Default()
	cfg.Instance = "laptop"
	sec := DefaultSections()
	sec.Notifier.RefreshInterval = time.Second
	st, err := Start(t.Context(), Options{Config: cfg, Sections: &sec, NATSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", SMTPAddr: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(context.Background()) })
	var body string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		body = get(t, st.HTTPURL+"/asynqmon/api/scheduler_entries")
		if strings.Contains(body, `"task_type":"registry:refresh"`) {
			break
		}
	}
	if !strings.Contains(body, `"task_type":"registry:refresh"`) || !strings.Contains(body, `"spec":"@every 1s"`) {
		t.Errorf("asynqmon scheduler entries: %s", body)
	}
}

package events

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

func gzipped(t testing.TB, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func withEncoding(enc string, data []byte) *nats.Msg {
	return &nats.Msg{Header: nats.Header{HeaderContentEncoding: {enc}}, Data: data}
}

func TestDecodeReplyBody(t *testing.T) {
	body := []byte(`{"instances":[],"url_map":{}}`)
	gz := gzipped(t, body)
	badCRC := bytes.Clone(gz)
	badCRC[len(badCRC)-5] ^= 0xff // the CRC-32 of the trailer
	badSize := bytes.Clone(gz)
	badSize[len(badSize)-1] ^= 0xff // ISIZE
	badDeflate := bytes.Clone(gz)
	badDeflate[10] = 0xff // the first deflate block's header: reserved type
	for _, tc := range []struct {
		name string
		msg  *nats.Msg
		want []byte
		err  string // "" for success
	}{
		{"no header", &nats.Msg{Data: body}, body, ""},
		{"other headers only", &nats.Msg{Header: nats.Header{"X": {"y"}}, Data: body}, body, ""},
		{"identity", withEncoding("identity", body), body, ""},
		{"empty value", withEncoding("", body), body, ""},
		{"gzip", withEncoding("gzip", gz), body, ""},
		{"gzip in capitals, header in lower case", &nats.Msg{Header: nats.Header{"content-encoding": {"GZIP"}}, Data: gz}, body, ""},
		{"gzip of nothing", withEncoding("gzip", gzipped(t, nil)), []byte{}, ""},
		{"two gzip members are one body", withEncoding("gzip", append(gzipped(t, body[:5]), gzipped(t, body[5:])...)), body, ""},
		{"unknown encoding", withEncoding("br", body), nil, `unknown Content-Encoding "br"`},
		{"deflate is not gzip", withEncoding("deflate", body), nil, `unknown Content-Encoding "deflate"`},
		{"stacked encodings", withEncoding("gzip, gzip", gz), nil, `unknown Content-Encoding "gzip, gzip"`},
		{"two headers", &nats.Msg{Header: nats.Header{HeaderContentEncoding: {"gzip", "gzip"}}, Data: gz}, nil, "2 Content-Encoding headers"},
		{"empty gzip body", withEncoding("gzip", nil), nil, "gzip body truncated (0 bytes)"},
		{"plain JSON said to be gzip", withEncoding("gzip", body), nil, "not gzip"},
		{"truncated header", withEncoding("gzip", gz[:5]), nil, "gzip body truncated (5 bytes)"},
		{"truncated data", withEncoding("gzip", gz[:len(gz)/2]), nil, "gzip body truncated"},
		{"truncated trailer", withEncoding("gzip", gz[:len(gz)-3]), nil, "gzip body truncated"},
		{"bad checksum", withEncoding("gzip", badCRC), nil, "corrupt gzip body: gzip: invalid checksum"},
		{"bad size", withEncoding("gzip", badSize), nil, "corrupt gzip body: gzip: invalid checksum"},
		{"bad deflate block", withEncoding("gzip", badDeflate), nil, "corrupt gzip body: flate: corrupt input"},
		{"garbage after the body", withEncoding("gzip", append(bytes.Clone(gz), "junk, and more junk"...)), nil, "corrupt gzip body: gzip: invalid header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeReplyBody(tc.msg)
			if tc.err == "" {
				if err != nil {
					t.Fatalf("error %v", err)
				}
				if !bytes.Equal(got, tc.want) {
					t.Errorf("got %q, want %q", got, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrReplyEncoding) {
				t.Errorf("error %v, want one matching ErrReplyEncoding saying %q", err, tc.err)
			}
			if got != nil {
				t.Errorf("a body (%d bytes) with the error", len(got))
			}
		})
	}
}

// bomb is a gzip body that inflates to n MiB and extra bytes of zeros: n
// members of one MiB each (about 1 KiB gzipped), so that making it costs
// nothing, and one member of extra zeros.
func bomb(t testing.TB, n, extra int) []byte {
	mib := gzipped(t, make([]byte, 1<<20))
	return append(bytes.Repeat(mib, n), gzipped(t, make([]byte, extra))...)
}

// A zip bomb is refused at the cap, and a body right at it passes.
func TestDecodeReplyBodyCap(t *testing.T) {
	const limit = 1 << 20
	for _, tc := range []struct {
		name string
		gz   []byte
		size int // inflated; -1 refused
	}{
		{"at the cap", gzipped(t, make([]byte, limit)), limit},
		{"a byte past it", gzipped(t, make([]byte, limit+1)), -1},
		{"at the cap in members", bomb(t, 1, 0), limit},
		{"a byte past it in members", bomb(t, 1, 1), -1},
		{"100 times past it", bomb(t, 100, 0), -1},
	} {
		got, err := appendReplyBody(nil, withEncoding("gzip", tc.gz), limit, nil)
		if (tc.size >= 0) != (err == nil) || (err == nil && len(got) != tc.size) {
			t.Errorf("%s (%d bytes gzipped): %d bytes, %v", tc.name, len(tc.gz), len(got), err)
		}
		if err != nil && (!errors.Is(err, ErrReplyEncoding) || !strings.Contains(err.Error(), "inflates past 1048576 bytes")) {
			t.Errorf("%s: error %v", tc.name, err)
		}
	}
	if testing.Short() {
		return
	}
	// The exported function's own cap: 64 MiB and one byte is refused.
	gz := bomb(t, MaxReplyBody>>20, 1)
	if _, err := DecodeReplyBody(withEncoding("gzip", gz)); err == nil || !strings.Contains(err.Error(), "inflates past 67108864 bytes") {
		t.Errorf("64 MiB + 1 (%d bytes gzipped): %v", len(gz), err)
	}
}

// AppendReplyBody keeps what dst holds, inflates into its spare room
// without allocating a new buffer, applies the cap to the body alone,
// and leaves dst as it was on an error.
func TestAppendReplyBody(t *testing.T) {
	body := bytes.Repeat([]byte(`{"name":"media","id":"m1"},`), 100)
	msg := withEncoding("gzip", gzipped(t, body))
	buf := make([]byte, 0, 64<<10)
	got, err := AppendReplyBody(append(buf, "head:"...), msg)
	if err != nil || string(got) != "head:"+string(body) || &got[0] != &buf[:1][0] {
		t.Fatalf("append: %d bytes, %v, same array %v", len(got), err, len(got) > 0 && &got[0] == &buf[:1][0])
	}
	if got, err := AppendReplyBody(got[:0], &nats.Msg{Data: body}); err != nil || !bytes.Equal(got, body) {
		t.Errorf("plain body: %q, %v", got, err)
	}
	prefix := bytes.Repeat([]byte("x"), 1<<20) // longer than the cap below
	if got, err := appendReplyBody(prefix, msg, len(body), nil); err != nil || len(got) != len(prefix)+len(body) {
		t.Errorf("the cap counted what dst held: %d bytes, %v", len(got), err)
	}
	if got, err := appendReplyBody(prefix, msg, len(body)-1, nil); err == nil || len(got) != len(prefix) {
		t.Errorf("past the cap: %d bytes, %v", len(got), err)
	}
	if got, err := AppendReplyBody([]byte("head:"), withEncoding("gzip", []byte("junk"))); err == nil || string(got) != "head:" {
		t.Errorf("corrupt: %q, %v", got, err)
	}
}

// A trailer claiming a huge size does not make the decoder reserve it.
func TestDecodeReplyBodyForgedSize(t *testing.T) {
	gz := gzipped(t, []byte("{}"))
	copy(gz[len(gz)-4:], []byte{0xff, 0xff, 0xff, 0x7f}) // 2 GiB
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 10 {
		if _, err := DecodeReplyBody(withEncoding("gzip", gz)); err == nil {
			t.Fatal("a forged size passed the checksum")
		}
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 10<<20 {
		t.Errorf("10 decodes of a %d-byte body claiming 2 GiB allocated %d bytes", len(gz), grew)
	}
}

func TestAcceptsGzip(t *testing.T) {
	for _, tc := range []struct {
		h    map[string][]string
		want bool
	}{
		{nil, false},
		{map[string][]string{}, false},
		{map[string][]string{"Accept-Encoding": {"gzip"}}, true},
		{map[string][]string{"accept-encoding": {"GZip"}}, true},
		{map[string][]string{"Accept-Encoding": {"br, gzip;q=0.8"}}, true},
		{map[string][]string{"Accept-Encoding": {"br", "gzip"}}, true},
		{map[string][]string{"Accept-Encoding": {"gzip;q=0"}}, false},
		{map[string][]string{"Accept-Encoding": {"gzip; q=0.0"}}, false},
		{map[string][]string{"Accept-Encoding": {"br, deflate"}}, false},
		{map[string][]string{"Accept-Encoding": {"x-gzip"}}, false},
		{map[string][]string{"Accept-Encoding": {""}}, false},
		{map[string][]string{"Content-Encoding": {"gzip"}}, false},
	} {
		if got := AcceptsGzip(tc.h); got != tc.want {
			t.Errorf("AcceptsGzip(%v) = %v, want %v", tc.h, got, tc.want)
		}
	}
}

// FuzzDecodeReplyBody: whatever the body and the header, the decoder
// returns without panicking, never more than its cap, an error matching
// ErrReplyEncoding or exactly what the standard gzip reader reads.
func FuzzDecodeReplyBody(f *testing.F) {
	body := []byte(`{"instances":[{"name":"media","id":"m1"}],"url_map":{"photo":"https://m.example"}}`)
	gz := gzipped(f, body)
	f.Add(gz, "gzip")
	f.Add(gz[:len(gz)-2], "gzip")
	f.Add(append(bytes.Clone(gz), gz...), "gzip")
	f.Add(gzipped(f, make([]byte, 70_000)), "gzip")
	f.Add(body, "")
	f.Add(body, "identity")
	f.Add(body, "br")
	f.Add([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff}, "gzip")
	const limit = 4 << 10 // small, so that the fuzzer reaches the cap often and each run is quick
	f.Fuzz(func(t *testing.T, data []byte, enc string) {
		// Appended after a prefix, into a buffer with room to spare, the
		// body is the same and the prefix is kept.
		prefix := append(make([]byte, 0, 256), "prefix"...)
		appended, aerr := appendReplyBody(prefix, withEncoding(enc, data), limit, nil)
		got, err := appendReplyBody(nil, withEncoding(enc, data), limit, nil)
		if (err == nil) != (aerr == nil) || string(appended[:6]) != "prefix" || !bytes.Equal(appended[6:], got) {
			t.Fatalf("appended after a prefix: %q, %v; alone: %q, %v", appended, aerr, got, err)
		}
		if err != nil {
			if !errors.Is(err, ErrReplyEncoding) || got != nil || len(appended) != 6 {
				t.Fatalf("error %v with %d bytes", err, len(got))
			}
			return
		}
		if len(got) > limit {
			t.Fatalf("%d bytes past the cap of %d", len(got), limit)
		}
		if !strings.EqualFold(strings.TrimSpace(enc), "gzip") {
			if !bytes.Equal(got, data) {
				t.Fatalf("%q body changed", enc)
			}
			return
		}
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("decoded what gzip refuses: %v", err)
		}
		want, err := io.ReadAll(io.LimitReader(zr, limit+1))
		if err != nil {
			t.Fatalf("decoded what gzip refuses: %v", err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("decoded %q, gzip reads %q", got, want)
		}
	})
}

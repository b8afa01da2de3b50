package events

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
)

// Reply encodings. A request whose Accept-Encoding header lists gzip may
// get its reply gzipped, saying so in the reply's Content-Encoding header;
// a request without it always gets the plain body. Today only
// registry.find[.<name>] compresses (see docs/CONTRACT.md).
const (
	HeaderAcceptEncoding  = "Accept-Encoding"
	HeaderContentEncoding = "Content-Encoding"
	EncodingGzip          = "gzip"
	EncodingIdentity      = "identity"
)

// MaxReplyBody is the most [DecodeReplyBody] decompresses: a body that
// inflates past it (a zip bomb, or a reply far larger than any allot
// sends) is refused rather than held in memory.
const MaxReplyBody = 64 << 20

// ErrReplyEncoding is matched by every error of [DecodeReplyBody]: the
// reply's body could not be decoded as its Content-Encoding says.
var ErrReplyEncoding = errors.New("events: reply body")

// maxDeflateRatio bounds how much DEFLATE can expand a body (1032:1 is
// its theoretical most), so a forged size in a gzip trailer cannot make
// DecodeReplyBody reserve more than the body could inflate to.
const maxDeflateRatio = 1032

// DecodeReplyBody returns msg's body as its Content-Encoding header says
// it was sent: as it is when there is none (or "identity"), inflated when
// it is "gzip". A truncated or corrupt gzip body, one that inflates past
// [MaxReplyBody], or another encoding is an error matching
// [ErrReplyEncoding].
func DecodeReplyBody(msg *nats.Msg) ([]byte, error) {
	if !replyEncoded(msg) {
		return msg.Data, nil
	}
	return appendReplyBody(nil, msg, MaxReplyBody, nil)
}

// AppendReplyBody appends msg's body, decoded as [DecodeReplyBody] does,
// to dst and returns the extended slice (dst unchanged on an error).
// Inflating into a buffer kept from one reply to the next saves
// allocating (and collecting) a large body every time.
func AppendReplyBody(dst []byte, msg *nats.Msg) ([]byte, error) {
	return appendReplyBody(dst, msg, MaxReplyBody, nil)
}

// replyEncoded reports whether msg says how its body is encoded, that is,
// whether decoding may do more than return it.
func replyEncoded(msg *nats.Msg) bool {
	return len(headerValues(msg.Header, HeaderContentEncoding)) > 0
}

// appendReplyBody is AppendReplyBody with a limit, and gzip readers
// taken from and returned to readers (nil: a new reader each time).
func appendReplyBody(dst []byte, msg *nats.Msg, limit int, readers *sync.Pool) ([]byte, error) {
	values := headerValues(msg.Header, HeaderContentEncoding)
	switch {
	case len(values) == 0:
		return append(dst, msg.Data...), nil
	case len(values) > 1:
		return dst, fmt.Errorf("%w: %d Content-Encoding headers %q, want at most one", ErrReplyEncoding, len(values), values)
	}
	switch enc := strings.TrimSpace(values[0]); {
	case enc == "" || strings.EqualFold(enc, EncodingIdentity):
		return append(dst, msg.Data...), nil
	case strings.EqualFold(enc, EncodingGzip):
		return appendGunzip(dst, msg.Data, limit, readers)
	default:
		return dst, fmt.Errorf("%w: unknown Content-Encoding %q (this client reads gzip or none)", ErrReplyEncoding, enc)
	}
}

// appendGunzip appends data inflated to dst, refusing more than limit
// bytes of output, with a reader of readers when it is not nil.
func appendGunzip(dst, data []byte, limit int, readers *sync.Pool) ([]byte, error) {
	var zr *gzip.Reader
	if readers != nil {
		zr, _ = readers.Get().(*gzip.Reader)
	}
	var err error
	if zr == nil {
		zr, err = gzip.NewReader(bytes.NewReader(data))
	} else {
		err = zr.Reset(bytes.NewReader(data))
	}
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return dst, fmt.Errorf("%w: gzip body truncated (%d bytes)", ErrReplyEncoding, len(data))
		}
		return dst, fmt.Errorf("%w: not gzip (%d bytes): %v", ErrReplyEncoding, len(data), err)
	}
	if readers != nil {
		defer readers.Put(zr)
	}
	// The trailer's ISIZE (the inflated size mod 2^32) sizes the buffer,
	// within what the body could inflate to and what is allowed; one byte
	// past the limit tells a body at the limit from one over it.
	size := 512
	if len(data) >= 4 {
		size = int(binary.LittleEndian.Uint32(data[len(data)-4:]))
	}
	base := len(dst)
	out := slices.Grow(dst, min(size, maxDeflateRatio*len(data), limit)+1)
	for {
		if len(out) == cap(out) {
			if len(out)-base > limit {
				return dst, fmt.Errorf("%w: gzip body inflates past %d bytes", ErrReplyEncoding, limit)
			}
			// Grow by doubling, but never past what is allowed.
			out = slices.Grow(out, min(cap(out)-base, limit+1-(len(out)-base)))
		}
		n, err := zr.Read(out[len(out):cap(out)])
		out = out[:len(out)+n]
		switch {
		case errors.Is(err, io.EOF):
			if len(out)-base > limit {
				return dst, fmt.Errorf("%w: gzip body inflates past %d bytes", ErrReplyEncoding, limit)
			}
			return out, nil
		case errors.Is(err, io.ErrUnexpectedEOF):
			return dst, fmt.Errorf("%w: gzip body truncated (%d bytes)", ErrReplyEncoding, len(data))
		case err != nil:
			return dst, fmt.Errorf("%w: corrupt gzip body: %v", ErrReplyEncoding, err)
		}
	}
}

// AcceptsGzip reports whether a request's headers accept a gzipped reply:
// an Accept-Encoding header (the name in any case) listing gzip, without
// q=0. Headers of nats.Msg and of micro.Request both convert to it.
func AcceptsGzip(h map[string][]string) bool {
	for _, v := range headerValues(h, HeaderAcceptEncoding) {
		for item := range strings.SplitSeq(v, ",") {
			coding, params, _ := strings.Cut(item, ";")
			if !strings.EqualFold(strings.TrimSpace(coding), EncodingGzip) {
				continue
			}
			if q, ok := strings.CutPrefix(strings.ReplaceAll(params, " ", ""), "q="); ok && strings.Trim(q, "0.") == "" {
				return false // gzip;q=0 refuses it
			}
			return true
		}
	}
	return false
}

// headerValues returns the values of header key, its name in any case:
// NATS headers are case-sensitive, HTTP's habits are not.
func headerValues(h map[string][]string, key string) []string {
	if v, ok := h[key]; ok {
		return v
	}
	for k, v := range h {
		if strings.EqualFold(k, key) {
			return v
		}
	}
	return nil
}

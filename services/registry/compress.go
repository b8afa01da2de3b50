package registry

import (
	"bytes"
	"compress/gzip"
)

// Find replies are gzipped for the clients that accept it
// (Accept-Encoding: gzip), once per cached reply.
const (
	// gzipLevel, from BenchmarkFindGzipLevel on the 1,000-instance reply
	// (185 KB): levels 1 to 3 make it 5.3-5.5 % of that (about 10 KB) in
	// 0.3-0.4 ms; 6 (the default) 5.0 % in 1.4 ms; 9 4.5 % in 5 ms.
	// Inflating takes the client 0.17-0.19 ms at any of them. Level 2 is
	// the smallest of the fast ones, and stays well ahead of level 1 on
	// less regular data (15.7 KB against 26 KB with nanosecond
	// timestamps). A compression costs the first gzip find after each
	// change (every find with find_cache 0); the 700 bytes level 6 would
	// save (0.4 % of the plain reply) are not worth four times that.
	gzipLevel = 2
	// gzipMin: a smaller reply (up to 4 instances) is sent plain, with no
	// Content-Encoding. Below it gzip saves at most about 600 bytes (840
	// to 229 for 4 instances; 288 to 195 for one) for 20-30 us of
	// compressing and 4-6 us of inflating on every client, and the
	// header costs 36 bytes: not worth it, and a small find stays
	// readable as it is.
	gzipMin = 1024
)

// gzipBytes returns data gzipped at gzipLevel. A reply is compressed once
// per cached reply, so a writer is made for each: pooling them would
// save little and keep state between finds.
func gzipBytes(data []byte) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(len(data)/8 + 64)
	w, err := gzip.NewWriterLevel(&buf, gzipLevel)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(data); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

package smtptest

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"strings"
	"testing"
	"time"
)

// Received is one message the server accepted.
type Received struct {
	From     string    // the envelope sender, from MAIL FROM
	To       []string  // the envelope recipients, from RCPT TO
	Data     []byte    // the message as sent after DATA, headers and body
	TLS      bool      // whether the connection was encrypted
	Username string    // who authenticated; "" without AUTH
	At       time.Time // when the server accepted it (after DATA)
}

// Parsed is a received message taken apart.
type Parsed struct {
	Header    mail.Header // as sent, with encoded words left encoded
	Subject   string      // the Subject header, decoded
	MediaType string      // the top-level media type, such as "multipart/alternative"
	Text      string      // the decoded text/plain part
	HTML      string      // the decoded text/html part
}

// Parse takes the message apart: it decodes the subject and the
// text/plain and text/html parts of a single-part or multipart message,
// undoing quoted-printable and base64 transfer encodings.
func (r Received) Parse() (Parsed, error) {
	msg, err := mail.ReadMessage(bytes.NewReader(r.Data))
	if err != nil {
		return Parsed{}, fmt.Errorf("smtptest: parse message: %w", err)
	}
	p := Parsed{Header: msg.Header}
	if p.Subject, err = new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject")); err != nil {
		return Parsed{}, fmt.Errorf("smtptest: decode subject: %w", err)
	}
	p.MediaType, err = p.addPart(msg.Header.Get("Content-Type"), msg.Header.Get("Content-Transfer-Encoding"), msg.Body)
	if err != nil {
		return Parsed{}, err
	}
	return p, nil
}

// MustParse is Parse that fails the test on error.
func (r Received) MustParse(t testing.TB) Parsed {
	t.Helper()
	p, err := r.Parse()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// addPart decodes one part into p, descending into multiparts, and
// returns the part's media type.
func (p *Parsed) addPart(contentType, encoding string, body io.Reader) (string, error) {
	if contentType == "" {
		contentType = "text/plain"
	}
	mediaType, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		return "", fmt.Errorf("smtptest: content type %q: %w", contentType, err)
	}
	if strings.HasPrefix(mediaType, "multipart/") {
		mr := multipart.NewReader(body, params["boundary"])
		for {
			part, err := mr.NextRawPart()
			if err == io.EOF {
				return mediaType, nil
			}
			if err != nil {
				return "", fmt.Errorf("smtptest: %s: %w", mediaType, err)
			}
			_, err = p.addPart(part.Header.Get("Content-Type"), part.Header.Get("Content-Transfer-Encoding"), part)
			if err != nil {
				return "", err
			}
		}
	}

	switch strings.ToLower(encoding) {
	case "quoted-printable":
		body = quotedprintable.NewReader(body)
	case "base64":
		body = base64.NewDecoder(base64.StdEncoding, body) // skips CR and LF
	}
	b, err := io.ReadAll(body)
	if err != nil {
		return "", fmt.Errorf("smtptest: decode %s (%s): %w", mediaType, encoding, err)
	}
	switch mediaType {
	case "text/plain":
		p.Text = string(b)
	case "text/html":
		p.HTML = string(b)
	}
	return mediaType, nil
}

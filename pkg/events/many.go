package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// A batch message carries many requests of one endpoint in one NATS
// message, and its reply their answers in the same order: what a
// [Client] with batching on sends when calls are in flight together, so
// that N decisions cost one message each way instead of N. The batch
// subjects (Subjects.CreditMany, AuthorizeMany, CheckMany) end in a
// scope token: [ScopeAll], or a uid, in which case every request of the
// batch must be for that uid. A key's role reaches them as
// <endpoint>_many.{uid}, so a key for every uid may send any batch, and
// a key for some uids only batches of each of its uids: the uids inside
// the body are held to the subject's scope, never taken on trust.

// ScopeAll is the scope token of a batch that may hold requests of any
// uids. It is not a uid (a uid has no '~'), so a key bound to uids
// cannot reach it.
const ScopeAll = "~all"

// Batch limits.
const (
	// MaxBatchRequests is the most requests one batch message carries.
	MaxBatchRequests = 1024
	// MaxBatchBytes is the largest batch message body.
	MaxBatchBytes = 512 << 10
)

// BatchRequest is the body of a batch message.
type BatchRequest struct {
	Requests []BatchItem `json:"requests"`
}

// BatchItem is one request of a batch: the uid, which the single
// request carries in its subject, and the single request's body.
type BatchItem struct {
	UID  string          `json:"uid"`
	Body json.RawMessage `json:"body,omitempty"`
}

// Validate checks a batch: 1 to MaxBatchRequests requests. A request's
// uid and body are checked by the endpoint, as a single request's are,
// and their errors are that request's own.
func (b BatchRequest) Validate() error {
	switch n := len(b.Requests); {
	case n == 0:
		return invalid("requests", "must hold 1 to %d requests (got none)", MaxBatchRequests)
	case n > MaxBatchRequests:
		return invalid("requests", "must hold 1 to %d requests (got %d)", MaxBatchRequests, n)
	}
	return nil
}

// DecodeBatchRequest parses a batch message body strictly: an unknown
// member, a member given twice, null, or anything but an object of
// {"uid","body"} objects is refused, naming where (requests[3].uid), with
// a limit of MaxBatchBytes instead of MaxRequestBytes; an empty body is
// {} (and so holds no requests). It looks into no body: a body's faults
// are its own request's, for the endpoint to answer, never its
// neighbours'. Nor does it check the uids, for the same reason.
func DecodeBatchRequest(body []byte) (BatchRequest, error) {
	if len(body) > MaxBatchBytes {
		return BatchRequest{}, invalid("request", "must be at most %d bytes (got %d)", MaxBatchBytes, len(body))
	}
	if len(bytes.TrimSpace(body)) == 0 {
		body = []byte("{}")
	}
	var quick BatchRequest
	if quick.readQuick(body) {
		return quick, nil
	}
	return decodeBatchJSON(body)
}

// decodeBatchJSON is DecodeBatchRequest through encoding/json, for any
// body.
func decodeBatchJSON(body []byte) (BatchRequest, error) {
	d := batchDecoder{dec: json.NewDecoder(bytes.NewReader(body))}
	b, err := d.envelope()
	if err != nil {
		var v *ValidationError
		if !errors.As(err, &v) {
			err = invalid("request", "is not valid JSON: %v", err)
		}
		return BatchRequest{}, err
	}
	return b, b.Validate()
}

// batchDecoder reads a batch message member by member: json.Decoder's
// Token for the structure, Decode for each value, so that a body is
// skipped over whole instead of token by token.
type batchDecoder struct {
	dec *json.Decoder
}

func (d batchDecoder) envelope() (BatchRequest, error) {
	var b BatchRequest
	if err := d.open('{', "request", "a JSON object"); err != nil {
		return b, err
	}
	seen := false
	for d.dec.More() {
		name, err := d.name()
		if err != nil {
			return b, err
		}
		switch {
		case name != "requests":
			return b, unknownMember("", name)
		case seen:
			return b, invalid(name, "given twice")
		}
		seen = true
		if b.Requests, err = d.items(); err != nil {
			return b, err
		}
	}
	if _, err := d.dec.Token(); err != nil { // '}'
		return b, err
	}
	if _, err := d.dec.Token(); err != io.EOF {
		return b, invalid("request", "must be one JSON object, found more after it")
	}
	return b, nil
}

func (d batchDecoder) items() ([]BatchItem, error) {
	if err := d.open('[', "requests", "an array"); err != nil {
		return nil, err
	}
	var items []BatchItem
	for i := 0; d.dec.More(); i++ {
		if i == MaxBatchRequests {
			return nil, invalid("requests", "must hold 1 to %d requests (got more)", MaxBatchRequests)
		}
		it, err := d.item(fmt.Sprintf("requests[%d]", i))
		if err != nil {
			return nil, err
		}
		items = append(items, it)
	}
	_, err := d.dec.Token() // ']'
	return items, err
}

func (d batchDecoder) item(path string) (BatchItem, error) {
	var it BatchItem
	if err := d.open('{', path, "an object of uid and body"); err != nil {
		return it, err
	}
	var seenUID, seenBody bool
	for d.dec.More() {
		name, err := d.name()
		if err != nil {
			return it, err
		}
		field := path + "." + name
		switch name {
		case "uid":
			if seenUID {
				return it, invalid(field, "given twice")
			}
			seenUID = true
			var raw json.RawMessage
			if err := d.dec.Decode(&raw); err != nil {
				return it, err
			}
			if raw[0] != '"' || json.Unmarshal(raw, &it.UID) != nil {
				return it, invalid(field, "must be a string (got %s)", quoteShort(string(raw)))
			}
		case "body":
			if seenBody {
				return it, invalid(field, "given twice")
			}
			seenBody = true
			if err := d.dec.Decode(&it.Body); err != nil {
				return it, err
			}
		default:
			return it, unknownMember(path, name)
		}
	}
	_, err := d.dec.Token() // '}'
	return it, err
}

// unknownMember is the error of a member named name that path's object
// does not have; an empty name is named by its object.
func unknownMember(path, name string) error {
	switch {
	case name == "" && path == "":
		return invalid("request", "has a member with an empty name")
	case name == "":
		return invalid(path, "has a member with an empty name")
	case path == "":
		return invalid(name, "is not a known field")
	}
	return invalid(path+"."+name, "is not a known field")
}

// open reads the '{' or '[' that must come next.
func (d batchDecoder) open(want json.Delim, field, what string) error {
	tok, err := d.dec.Token()
	if err != nil {
		return err
	}
	if got, ok := tok.(json.Delim); !ok || got != want {
		return invalid(field, "must be %s (got %s)", what, describeToken(tok))
	}
	return nil
}

// name reads a member's name.
func (d batchDecoder) name() (string, error) {
	tok, err := d.dec.Token()
	if err != nil {
		return "", err
	}
	name, _ := tok.(string)
	return name, nil
}

// describeToken names what a JSON token is, for an error.
func describeToken(tok json.Token) string {
	switch v := tok.(type) {
	case nil:
		return "null"
	case json.Delim:
		if v == '{' {
			return "an object"
		}
		return "an array"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	}
	return "a number"
}

// BatchReply is the reply to a batch message: one result per request, in
// the order of the requests.
type BatchReply struct {
	Replies []BatchResult `json:"replies"`
}

// BatchResult is the answer to one request of a batch: Status 200 and
// the single request's reply as Body, or the error status and the error
// body a single request would have got (a 429 from authorize carries the
// decision beside the error, as it does alone).
type BatchResult struct {
	Status int             `json:"status"`
	Body   json.RawMessage `json:"body"`
}

// Err returns the error r carries, nil for a 200: a [ServiceError] with
// r's status, and the code, message and field of its body.
func (r BatchResult) Err() error {
	if r.Status == 200 {
		return nil
	}
	serr := &ServiceError{Status: r.Status, Code: CodeForStatus(r.Status), Message: "status " + strconv.Itoa(r.Status)}
	var body ErrorBody
	if json.Unmarshal(r.Body, &body) == nil && body.Error.Code != "" {
		serr.Code, serr.Field = body.Error.Code, body.Error.Field
		if body.Error.Message != "" {
			serr.Message = body.Error.Message
		}
	}
	return serr
}

// AppendBatchReply appends the JSON of a batch reply with results to dst,
// without re-encoding the bodies (each is already JSON; an empty one is
// written as null).
func AppendBatchReply(dst []byte, results []BatchResult) []byte {
	dst = append(dst, `{"replies":[`...)
	for i, r := range results {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"status":`...)
		dst = strconv.AppendInt(dst, int64(r.Status), 10)
		dst = append(dst, `,"body":`...)
		if len(r.Body) == 0 {
			dst = append(dst, "null"...)
		} else {
			dst = append(dst, r.Body...)
		}
		dst = append(dst, '}')
	}
	return append(dst, "]}"...)
}

// AppendBatchRequest appends the JSON of a batch message to dst; each
// body must be a JSON object already (a request as json.Marshal writes
// it).
func AppendBatchRequest(dst []byte, items []BatchItem) []byte {
	dst = append(dst, `{"requests":[`...)
	for i, it := range items {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"uid":`...)
		dst = strconv.AppendQuote(dst, it.UID) // a uid token needs no escaping; quoted all the same
		if len(it.Body) > 0 {
			dst = append(dst, `,"body":`...)
			dst = append(dst, it.Body...)
		}
		dst = append(dst, '}')
	}
	return append(dst, "]}"...)
}

// InScope reports whether a request for uid may travel in a batch of
// scope: every uid in a batch of ScopeAll, only scope's own in another.
func InScope(scope, uid string) bool { return scope == ScopeAll || scope == uid }

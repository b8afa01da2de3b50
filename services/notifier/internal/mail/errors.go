package mail

import (
	"context"
	"errors"
	"fmt"
	"net/textproto"

	gomail "github.com/wneessen/go-mail"
)

// ErrInvalid marks a message that cannot be sent as it is: a bad
// recipient, a header that would inject lines, an empty body. Sending it
// again will not help.
var ErrInvalid = errors.New("mail: invalid message")

// ErrOutcomeUnknown marks a delivery whose data went out in full but
// whose reply never came: the connection broke or the time ran out after
// the line that ends the data. The server may have taken the message or
// not; whether to send it again is the caller's choice.
var ErrOutcomeUnknown = errors.New("mail: no reply to the end of the data, the message may have been taken")

// SendError is a failed delivery attempt, classified for the caller's
// retry decision.
type SendError struct {
	// Code is the SMTP reply code that refused the message, such as 450
	// or 550, or 0 when there was no reply: the connection was refused
	// or broke, TLS failed, a timeout hit.
	Code int
	// Permanent is true when the server refused with a 5xx reply:
	// sending the same message again will fail the same way. Everything
	// else is worth retrying with a backoff.
	Permanent bool
	Err       error
}

func (e *SendError) Error() string {
	kind := "transient"
	if e.Permanent {
		kind = "permanent"
	}
	if e.Code != 0 {
		return fmt.Sprintf("mail: send failed (%s, %d): %v", kind, e.Code, e.Err)
	}
	return fmt.Sprintf("mail: send failed (%s): %v", kind, e.Err)
}

func (e *SendError) Unwrap() error { return e.Err }

// IsPermanent reports whether retrying err will not help: the message is
// invalid (ErrInvalid) or the server refused it with a 5xx reply.
func IsPermanent(err error) bool {
	if errors.Is(err, ErrInvalid) {
		return true
	}
	var se *SendError
	return errors.As(err, &se) && se.Permanent
}

// classify wraps an error from go-mail into a SendError.
//
// go-mail reports a refusal after the connection is set up (MAIL, RCPT,
// DATA) as its *SendError, which keeps the reply code but does not
// unwrap to it; a refusal while setting up (greeting, EHLO, STARTTLS,
// AUTH) comes wrapped with %w around the *textproto.Error of the reply.
// Anything else (a dial, network, TLS or timeout error) has no code.
// ctx is the context of the whole attempt: once it is done, the error is
// the abort it caused, and transient whatever the server said last.
func classify(ctx context.Context, err error) *SendError {
	code := 0
	var gse *gomail.SendError
	var tpe *textproto.Error
	switch {
	case errors.As(err, &gse):
		code = gse.ErrorCode()
	case errors.As(err, &tpe):
		code = tpe.Code
	}
	if cerr := ctx.Err(); cerr != nil {
		return &SendError{Code: code, Err: fmt.Errorf("%w: %w", cerr, err)}
	}
	return &SendError{Code: code, Permanent: code >= 500 && code <= 599, Err: err}
}

package keysource

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/smithy-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// CallTimeout bounds every call to a remote key service (Vault, KMS, STS),
// well inside the webhook's decrypt timeout.
const CallTimeout = 3 * time.Second

// safeError is an error whose text is already safe to show.
type safeError struct{ msg string }

func (e *safeError) Error() string { return e.msg }

// remoteError reduces a cloud SDK error to what is safe to show: the
// operation and the service's error code, or that it timed out.
func remoteError(op string, err error) error {
	var api smithy.APIError
	switch {
	case errors.As(err, &api):
		return &safeError{fmt.Sprintf("%s: %s", op, api.ErrorCode())}
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return &safeError{fmt.Sprintf("%s: no answer within %s", op, CallTimeout)}
	}
	return &safeError{fmt.Sprintf("%s failed", op)}
}

// grpcError reduces a gRPC error to the operation and its status code.
func grpcError(op string, err error) error {
	st, ok := status.FromError(err)
	switch {
	case errors.Is(err, context.DeadlineExceeded), ok && st.Code() == codes.DeadlineExceeded:
		return &safeError{fmt.Sprintf("%s: no answer within %s", op, CallTimeout)}
	case ok:
		return &safeError{fmt.Sprintf("%s: %s", op, st.Code())}
	}
	return &safeError{fmt.Sprintf("%s failed", op)}
}

// isTimeout reports whether err is a network timeout.
func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

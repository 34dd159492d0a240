package idempotency

import (
	"errors"
	"fmt"
	"time"
)

// Key errors. A *KeyError wraps ErrInvalidKey and exactly one of the more
// specific sentinels, so callers can match either.
var (
	ErrInvalidKey     = errors.New("idempotency: invalid key")
	ErrEmptyNamespace = errors.New("idempotency: empty namespace")
	ErrNoParts        = errors.New("idempotency: key has no parts")
	ErrEmptyPart      = errors.New("idempotency: empty key part")
	ErrInvalidUTF8    = errors.New("idempotency: key part is not valid UTF-8")
	ErrInvalidName    = errors.New("idempotency: invalid name")
)

// Configuration errors, returned before anything touches the store or the
// provider.
var (
	// ErrInvalidEffect is returned by Run (OutcomeInvalid) for an effect
	// without a name, a key function or a call, or with a lease that does
	// not fit in its DedupWindow, and for an input whose fingerprint cannot
	// be computed.
	ErrInvalidEffect = errors.New("idempotency: invalid effect")
	// ErrNilStore is returned by NewExecutor for a nil store.
	ErrNilStore = errors.New("idempotency: nil store")
)

// Outcome errors: Run returns an error matching one of these whenever the
// Outcome is not Applied, AlreadyApplied, Skipped, Reconciled or InFlight.
var (
	// ErrRetryable: the provider call failed in a way that may succeed
	// later; the claim was released and the key kept for the next run.
	ErrRetryable = errors.New("idempotency: retryable failure")
	// ErrPermanent: the provider refused the request; the record was marked
	// failed, which frees the key for a deliberate later run.
	ErrPermanent = errors.New("idempotency: permanent failure")
	// ErrFingerprintMismatch: the key is already used with another payload.
	// The error is a *MismatchError carrying the stored record.
	ErrFingerprintMismatch = errors.New("idempotency: key reused with a different payload")
	// ErrNeedsReconciliation: the provider may have acted and a blind retry
	// could duplicate the effect (a saved failure, a dead holder whose call
	// may have started, a provider that ignores keys, a key past the
	// provider's window). An effect with Find settles such a record on a
	// later run; otherwise an operator does (Operator.ListStuck, Settle).
	ErrNeedsReconciliation = errors.New("idempotency: needs reconciliation")
	// ErrNotDue: the record may not be tried yet (a provider's Retry-After,
	// a backoff, or an earlier attempt that may still be running).
	ErrNotDue = errors.New("idempotency: not due yet")
	// ErrClaimLost: the claim's fencing token no longer matches (the lease
	// expired and another worker took over, or the record was settled),
	// or the record is not in a state the change may start from. The
	// store changed nothing.
	ErrClaimLost = errors.New("idempotency: claim lost (stale fencing token)")
	// ErrClaimLive: a claim holds the record under a live lease, so an
	// operator's settlement (without Force) or a former holder's recovery
	// was refused. The store changed nothing.
	ErrClaimLive = errors.New("idempotency: a live claim holds the record")
	// ErrInvalidTransition: a change or settlement the state machine does
	// not allow (see Transitions). The store changed nothing.
	ErrInvalidTransition = errors.New("idempotency: invalid transition")
	// ErrNotFound: no record matches.
	ErrNotFound = errors.New("idempotency: record not found")
	// ErrEncodeResult: the provider call succeeded but its result could not
	// be encoded; the record is left in doubt (never an applied record
	// without its result) and the outcome needs reconciliation.
	ErrEncodeResult = errors.New("idempotency: cannot encode result")
	// ErrDecodeResult: a stored result could not be decoded into Out.
	ErrDecodeResult = errors.New("idempotency: cannot decode stored result")
	// ErrSkip is returned (wrapped) by an effect's Call to record that there
	// was nothing to do: the record is stored as skipped, which blocks the
	// key like an applied one.
	ErrSkip = errors.New("idempotency: skipped")
)

// KeyError describes why a key could not be built.
type KeyError struct {
	Namespace string
	Part      string // the offending part's name, if any
	Reason    string
	Err       error // one of the key sentinels
}

func (e *KeyError) Error() string {
	msg := "idempotency: invalid key"
	if e.Namespace != "" {
		msg += " in namespace " + e.Namespace
	}
	if e.Part != "" {
		msg += ", part " + e.Part
	}
	return msg + ": " + e.Reason
}

// Unwrap returns the specific sentinel and ErrInvalidKey.
func (e *KeyError) Unwrap() []error { return []error{e.Err, ErrInvalidKey} }

// MismatchError reports that a key is already held by a record with another
// payload fingerprint. No provider call was made for the new payload.
type MismatchError struct {
	Key    string
	Stored Record // the record already there: its state and result
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("idempotency: key in namespace %s reused with a different payload (stored record is %s)",
		e.Stored.Namespace, e.Stored.State)
}

// Unwrap returns ErrFingerprintMismatch.
func (e *MismatchError) Unwrap() error { return ErrFingerprintMismatch }

// LostResultError reports a provider success that could not be recorded:
// the run's completion was refused (its claim was lost) and the key's
// record says something else (another result, another payload). Result is
// the encoded result the provider returned to this run, kept here (and in
// the log and the Event) so that an operator can reconcile by hand. It
// matches ErrNeedsReconciliation.
type LostResultError struct {
	Key     string
	Result  []byte // what the provider answered this run, encoded
	Current Record // the key's record as the recovery found it (zero if none)
}

func (e *LostResultError) Error() string {
	return fmt.Sprintf("idempotency: the provider succeeded but the result could not be recorded: "+
		"the claim was lost and the record in namespace %s is %s (result kept: %d bytes)",
		e.Current.Namespace, e.Current.State, len(e.Result))
}

// Unwrap returns ErrNeedsReconciliation.
func (e *LostResultError) Unwrap() error { return ErrNeedsReconciliation }

// Class is what a provider error says about the provider: whether it may
// have acted, and whether asking again can help. Adapters classify their
// errors (NotActed, Unknown, Permanent, Mismatch, Reconcile); the executor
// decides from the class and the effect's policy what happens to the claim.
//
//	class       provider may have acted   in-run retry                    the record afterwards
//	NotActed    no                        yes                             released: free once due, at any age
//	Unknown     yes                       ExpiredRetry, inside the window  unknown (ExpiredRetry) or in doubt
//	Permanent   no (it refused)           no                              failed: the key free
//	Mismatch    no                        no                              failed
//	Reconcile   yes                       no                              in doubt: Find or an operator
//
// An error nobody classified is ClassUnknown: the provider may have acted.
type Class uint8

const (
	// ClassUnknown: the provider may have acted (a timeout after the
	// request was written, a lost response, a 5xx), and so may any error
	// nobody classified. A retry is safe only under the same key, where the
	// provider deduplicates (ExpiredRetry) and still remembers the key.
	ClassUnknown Class = iota
	// ClassNotActed: the provider provably did nothing (a 429 or 409
	// answered before executing, a validation error it does not save, a
	// refused connection, a request never written). Safe to retry, at any
	// time, under any key.
	ClassNotActed
	// ClassPermanent: the provider refused the request; retrying the same
	// request cannot help.
	ClassPermanent
	// ClassMismatch: the provider saw this key with other parameters.
	ClassMismatch
	// ClassReconcile: the provider may have acted and its answer under this
	// key will never change (Stripe replaying a saved 500): only asking the
	// provider (Effect.Find) or an operator settles it.
	ClassReconcile
)

func (c Class) String() string {
	switch c {
	case ClassNotActed:
		return "not_acted"
	case ClassPermanent:
		return "permanent"
	case ClassMismatch:
		return "mismatch"
	case ClassReconcile:
		return "reconcile"
	default:
		return "unknown"
	}
}

// ProviderError is a classified error from an effect's Call. Adapters
// return it (through NotActed, Unknown, Permanent, Mismatch, Reconcile) so
// the executor knows what the provider may have done.
type ProviderError struct {
	Class Class
	// RetryAfter is the provider's requested delay (Retry-After), or zero.
	RetryAfter time.Duration
	Err        error
}

func (e *ProviderError) Error() string {
	if e.Err == nil {
		return "provider error (" + e.Class.String() + ")"
	}
	return e.Err.Error()
}

// Unwrap returns the cause.
func (e *ProviderError) Unwrap() error { return e.Err }

// Is matches the outcome sentinel of the error's class.
func (e *ProviderError) Is(target error) bool {
	switch target {
	case ErrRetryable:
		return e.Class == ClassNotActed || e.Class == ClassUnknown
	case ErrPermanent:
		return e.Class == ClassPermanent
	case ErrFingerprintMismatch:
		return e.Class == ClassMismatch
	case ErrNeedsReconciliation:
		return e.Class == ClassReconcile
	}
	return false
}

// NotActed marks err as proof that the provider did nothing, optionally
// asking for a delay before the next try (Retry-After).
func NotActed(err error, after time.Duration) error {
	return &ProviderError{Class: ClassNotActed, RetryAfter: after, Err: err}
}

// Unknown marks err as leaving the provider's action unknown (it may have
// acted), optionally with the provider's requested delay.
func Unknown(err error, after time.Duration) error {
	return &ProviderError{Class: ClassUnknown, RetryAfter: after, Err: err}
}

// Permanent marks err as the provider's refusal.
func Permanent(err error) error { return &ProviderError{Class: ClassPermanent, Err: err} }

// Mismatch marks err as the provider's report that the key was used with
// other parameters.
func Mismatch(err error) error { return &ProviderError{Class: ClassMismatch, Err: err} }

// Reconcile marks err as needing reconciliation: the provider may have
// acted and will answer the same under this key.
func Reconcile(err error) error { return &ProviderError{Class: ClassReconcile, Err: err} }

// Skip returns an error wrapping ErrSkip, for a Call that decides there is
// nothing to do. The Out value returned with it is stored as the result.
func Skip(reason string) error { return fmt.Errorf("%w: %s", ErrSkip, reason) }

// Classify returns the class of err and its retry delay. Errors that are not
// a *ProviderError are ClassUnknown: the provider may have acted.
func Classify(err error) (Class, time.Duration) {
	var pe *ProviderError
	if errors.As(err, &pe) {
		return pe.Class, pe.RetryAfter
	}
	return ClassUnknown, 0
}

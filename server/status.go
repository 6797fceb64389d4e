package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/altinn"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// MaskinportenDomain is the ErrorInfo domain of errors that carry
// Maskinporten's error and MP code.
const MaskinportenDomain = "maskinporten.no"

// toStatus maps an error from the broker to the status the caller sees. It
// is the only place that chooses codes. Messages never hold a token or a
// grant: broker errors never do, and Maskinporten's descriptions are
// sanitised by package maskinporten.
func toStatus(err error) error {
	var (
		fe *broker.FieldError
		me *maskinporten.Error
		se *maskinporten.SignError
		pe *altinn.ProblemError
	)
	switch {
	case errors.Is(err, broker.ErrNotFound):
		// Before the refusal case: a request of a customer the caller may
		// not see is answered like a missing one.
		return errNotFound
	case errors.As(err, &fe):
		return invalidArgument(fe.Field, fe.Reason)
	case errors.Is(err, broker.ErrPermissionDenied), errors.Is(err, broker.ErrScopeNotAllowed):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, broker.ErrMinValidityTooLong):
		return withDetails(status.New(codes.OutOfRange, "min_validity: "+err.Error()),
			&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "min_validity", Description: err.Error()}}})
	case errors.As(err, &me):
		return maskinportenStatus(err, me)
	case errors.As(err, &se):
		return status.Error(codes.Unavailable, "the signing backend is unavailable, retry later: "+err.Error())
	case errors.As(err, &pe):
		return altinnStatus(pe)
	case errors.Is(err, broker.ErrUpstreamSlow):
		return status.Error(codes.Unavailable, err.Error()+"; retry later")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded before a token was available")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "call canceled")
	default:
		return errInternal
	}
}

var (
	errInternal = status.Error(codes.Internal, "internal error")
	errNotFound = status.Error(codes.NotFound, "id: "+broker.ErrNotFound.Error())
)

// altinnFields names the request field each of Altinn's validation codes
// is about (Altinn/altinn-authentication src/Core/Problems/Problem.cs and
// src/Core/Errors/ValidationErrors.cs), so that the caller learns which of
// its fields to fix.
var altinnFields = map[string]string{
	"AUTH-00000":     "customer_org",          // the customer is not in the business register
	"AUTH-00001":     "rights",                // a right the system does not have, or not delegable
	"AUTH-00021":     "redirect_url",          // not one of the system's allowed redirect URLs
	"AUTH-00026":     "redirect_url",          // the system has no allowed redirect URLs
	"AUTH-00027":     "access_packages",       // a package that maps to no role
	"AUTH-00028":     "customer_org",          // customer id missing or invalid
	"AUTH-00058":     "access_packages",       // an agent request without packages
	"AUTH-00059":     "rights",                // neither rights nor packages
	"AUTH-00063":     "access_packages",       // a package the system does not have
	"AUTH-00064":     "access_packages",       // a client-relation package on a standard request
	"AUTH-00065":     "access_packages",       // a package not meant for client relations on an agent request
	"AUTH.VLD-00003": "rights",                // resource not in the resource register
	"AUTH.VLD-00004": "client",                // the client id is on another system
	"AUTH.VLD-00005": "allowed_redirect_urls", // not an https URL
	"AUTH.VLD-00006": "rights",                // duplicates
	"AUTH.VLD-00007": "access_packages",       // duplicates
	"AUTH.VLD-00008": "access_packages",       // unknown or not delegable
	"AUTH.VLD-00009": "rights",                // resource id format
	"AUTH.VLD-00017": "rights",                // resource not delegable
	"AUTH.VLD-00018": "access_packages",       // client-relation package on a visible system
}

// altinnStatus maps an error answer of Altinn's vendor API, keeping its
// AUTH code. A validation code Altinn answers with 400 is INVALID_ARGUMENT
// naming the field.
func altinnStatus(pe *altinn.ProblemError) error {
	if field, ok := altinnFields[pe.Code]; ok && pe.StatusCode == 400 {
		st := status.New(codes.InvalidArgument, field+": Altinn refused it: "+pe.Error())
		return withDetails(st,
			&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: pe.Error()}}},
			&errdetails.ErrorInfo{Reason: pe.Code, Domain: AltinnDomain, Metadata: map[string]string{"http_status": "400", "code": pe.Code}})
	}
	code := codes.FailedPrecondition
	switch {
	case pe.StatusCode == 0 || pe.StatusCode >= 500 || pe.StatusCode == 429:
		code = codes.Unavailable
	case pe.StatusCode == 404:
		code = codes.NotFound
	case pe.Code == "AUTH-00004", pe.Code == "AUTH.VLD-00002":
		code = codes.AlreadyExists
	case pe.StatusCode == 401 || pe.StatusCode == 403:
		code = codes.PermissionDenied
	case strings.HasPrefix(pe.Code, "AUTH.VLD-"), pe.Code == "AUTH-00001", pe.Code == "AUTH-00021", pe.StatusCode == 400 && pe.Code == "":
		code = codes.InvalidArgument
	}
	info := &errdetails.ErrorInfo{Reason: "ALTINN_ERROR", Domain: AltinnDomain, Metadata: map[string]string{"http_status": strconv.Itoa(pe.StatusCode)}}
	if pe.Code != "" {
		info.Reason, info.Metadata["code"] = pe.Code, pe.Code
	}
	return withDetails(status.New(code, pe.Error()), info)
}

func maskinportenStatus(err error, me *maskinporten.Error) error {
	info := &errdetails.ErrorInfo{
		Reason:   "MASKINPORTEN_ERROR",
		Domain:   MaskinportenDomain,
		Metadata: map[string]string{},
	}
	if me.MPCode != "" {
		info.Reason = me.MPCode
		info.Metadata["mp_code"] = me.MPCode
	}
	if me.Code != "" {
		info.Metadata["error"] = me.Code
	}
	if me.StatusCode != 0 {
		info.Metadata["http_status"] = strconv.Itoa(me.StatusCode)
	}
	var st *status.Status
	switch {
	case errors.Is(err, altinn.ErrRejected):
		// Altinn refused the Maskinporten token again after one fresh
		// token (AuthenticationController.cs answers 401 when it cannot
		// validate the token): that is configuration, not an outage.
		info.Domain, info.Reason = AltinnDomain, "ALTINN_EXCHANGE_REJECTED"
		info.Metadata["check"] = "the Maskinporten client must issue JWT (self-contained) tokens, not tokens by reference; " +
			"the Maskinporten environment must be the one this Altinn environment trusts (test with TT02, prod with production); " +
			"the token must carry the consumer claim (the vendor organisation)"
		st = status.New(codes.FailedPrecondition, "Altinn's token exchange refused the Maskinporten token twice (HTTP 401), "+
			"with a fresh token the second time: check that the client issues JWT tokens (not by reference), that the "+
			"Maskinporten and Altinn environments are paired, and that the token carries the consumer claim")
	case me.NoSystemUser():
		st = status.New(codes.FailedPrecondition, fmt.Sprintf(
			"no approved system user for this customer: the customer organisation must approve a system user "+
				"request for this client's system (with this external_ref, if one is used) before tokens can be issued (%v)", err))
	case me.Retryable:
		st = status.New(codes.Unavailable, fmt.Sprintf("Maskinporten is unavailable, retry later (%v)", err))
		info.Reason = "MASKINPORTEN_UNAVAILABLE"
		if me.CircuitOpen || me.Throttled || me.RetryAfter > 0 {
			// The breaker is open or Maskinporten asked for a pause: say
			// when a retry can succeed.
			return withDetails(st, info, &errdetails.RetryInfo{RetryDelay: durationpb.New(max(me.RetryAfter, time.Millisecond))})
		}
	default:
		st = status.New(codes.FailedPrecondition, fmt.Sprintf("Maskinporten refused the grant; fix the client configuration (%v)", err))
	}
	return withDetails(st, info)
}

// invalidArgument is the status of a bad request field; the message starts
// with the field name.
func invalidArgument(field, reason string) error {
	st := status.New(codes.InvalidArgument, field+": "+reason)
	return withDetails(st, &errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: reason}},
	})
}

func withDetails(st *status.Status, details ...protoadapt.MessageV1) error {
	if d, err := st.WithDetails(details...); err == nil {
		return d.Err()
	}
	return st.Err()
}

// recoverUnary turns a panic in a handler into Internal and logs it with its
// stack.
func (s *Server) recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic in handler", slog.String("method", info.FullMethod),
				slog.String("panic", fmt.Sprint(p)), slog.String("stack", string(debug.Stack())))
			resp, err = nil, errInternal
		}
	}()
	return h(ctx, req)
}

// recoverStream is recoverUnary for streams.
func (s *Server) recoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic in handler", slog.String("method", info.FullMethod),
				slog.String("panic", fmt.Sprint(p)), slog.String("stack", string(debug.Stack())))
			err = errInternal
		}
	}()
	return h(srv, ss)
}

// logUnary writes one line per call: method, code, duration, peer, the
// request's non-secret fields and, for a token, its identifiers and expiry.
// It never logs a token.
func (s *Server) logUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	level := slog.LevelInfo
	var st *status.Status
	if err != nil {
		st = status.Convert(err)
		level = slog.LevelWarn
		if st.Code() == codes.Internal || st.Code() == codes.Unknown {
			level = slog.LevelError
		}
	}
	if !s.log.Enabled(ctx, level) {
		return resp, err
	}
	code := codes.OK
	if st != nil {
		code = st.Code()
	}
	attrs := make([]slog.Attr, 0, 12)
	attrs = append(attrs,
		slog.String("method", info.FullMethod),
		slog.String("code", code.String()),
		slog.Duration("duration", time.Since(start)),
	)
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		attrs = append(attrs, slog.String("peer", p.Addr.String()))
	}
	if caller, ok := CallerFromContext(ctx); ok {
		attrs = append(attrs, slog.String("caller", caller))
	}
	if r, ok := req.(*tokenbrokerv1.GetTokenRequest); ok {
		attrs = append(attrs,
			slog.String("client", truncate(r.GetClient(), 64)),
			slog.String("customer_org", truncate(r.GetCustomerOrg(), 32)),
			slog.Int("scopes", len(r.GetScopes())))
	}
	if r, ok := resp.(*tokenbrokerv1.GetTokenResponse); ok && r != nil {
		attrs = append(attrs, slog.String("key_id", r.GetKeyId()), slog.Bool("cached", r.GetCached()))
	}
	if st != nil {
		attrs = append(attrs, slog.String("error", truncate(st.Message(), 1024)))
	}
	s.log.LogAttrs(ctx, level, "rpc", attrs...)
	return resp, err
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

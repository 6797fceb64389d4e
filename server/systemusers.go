package server

import (
	"context"
	"errors"
	"log/slog"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/altinn"
	"github.com/tokenbroker/tokenbroker/broker/audit"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// AltinnDomain is the ErrorInfo domain of errors that carry Altinn's
// AUTH-000nn codes.
const AltinnDomain = "altinn.no"

// SystemUsers is what SystemUserService needs of the broker.
type SystemUsers interface {
	CreateSystemUserRequest(ctx context.Context, p broker.SystemUserRequestParams) (*broker.CreatedRequest, error)
	GetSystemUserRequest(ctx context.Context, l broker.SystemUserLookup) (*altinn.Request, error)
	DeleteSystemUserRequest(ctx context.Context, l broker.SystemUserLookup) (*altinn.Request, error)
	ListSystemUserRequests(ctx context.Context, caller, client string, agent bool, pageToken string) ([]altinn.Request, string, error)
	ListSystemUsers(ctx context.Context, caller, client, pageToken string) ([]altinn.SystemUser, string, error)
	RegisterSystem(ctx context.Context, r broker.SystemRegistration) (string, error)
}

// systemUserService implements SystemUserService on the broker.
type systemUserService struct {
	tokenbrokerv1.UnimplementedSystemUserServiceServer
	broker SystemUsers
	srv    *Server
}

// fail maps err to its status, logging the detail of an Internal one.
func (s *systemUserService) fail(ctx context.Context, err error) error {
	st := toStatus(err)
	if errors.Is(st, errInternal) {
		s.srv.log.ErrorContext(ctx, "system user call failed", slog.String("error", err.Error()))
	}
	return st
}

// done audits a SystemUserService call and returns the status its error
// maps to (nil on success), logging the detail of an Internal one.
func (s *systemUserService) done(ctx context.Context, method, client, org, ref string, err error) error {
	var st error
	decision := audit.Allow
	if err != nil {
		st, decision = s.fail(ctx, err), decisionOf(err)
	}
	if s.srv.audit != nil {
		caller, _ := CallerFromContext(ctx)
		s.srv.writeAudit(&audit.Record{Caller: caller, Method: method, Client: client, CustomerOrg: org, ExternalRef: ref}, decision, st)
	}
	return st
}

func (s *systemUserService) CreateSystemUserRequest(ctx context.Context, req *tokenbrokerv1.CreateSystemUserRequestRequest) (*tokenbrokerv1.CreateSystemUserRequestResponse, error) {
	caller, _ := CallerFromContext(ctx)
	r, err := s.broker.CreateSystemUserRequest(ctx, broker.SystemUserRequestParams{
		Caller: caller, Client: req.GetClient(), CustomerOrg: req.GetCustomerOrg(), ExternalRef: req.GetExternalRef(),
		RedirectURL: req.GetRedirectUrl(), Rights: req.GetRights(), AccessPackages: req.GetAccessPackages(), Agent: req.GetAgent(),
		ReplaceRejected: req.GetReplaceRejected(),
	})
	if r != nil && r.Replaced != "" {
		// The deletion of the rejected request gets its own audit line.
		_ = s.done(ctx, tokenbrokerv1.SystemUserService_DeleteSystemUserRequest_FullMethodName, req.GetClient(), req.GetCustomerOrg(), req.GetExternalRef(), nil)
	}
	if st := s.done(ctx, tokenbrokerv1.SystemUserService_CreateSystemUserRequest_FullMethodName, req.GetClient(), req.GetCustomerOrg(), req.GetExternalRef(), err); st != nil {
		return nil, st
	}
	return &tokenbrokerv1.CreateSystemUserRequestResponse{Request: toProtoRequest(r.Request, req.GetClient(), req.GetAgent()),
		Existing: r.Existing, ReplacedRequestId: r.Replaced}, nil
}

func (s *systemUserService) DeleteSystemUserRequest(ctx context.Context, req *tokenbrokerv1.DeleteSystemUserRequestRequest) (*tokenbrokerv1.DeleteSystemUserRequestResponse, error) {
	caller, _ := CallerFromContext(ctx)
	r, err := s.broker.DeleteSystemUserRequest(ctx, broker.SystemUserLookup{Caller: caller, Client: req.GetClient(), ID: req.GetId(), Agent: req.GetAgent()})
	var org, ref string
	if r != nil {
		org, ref = r.PartyOrgNo, r.ExternalRef
	}
	if st := s.done(ctx, tokenbrokerv1.SystemUserService_DeleteSystemUserRequest_FullMethodName, req.GetClient(), org, ref, err); st != nil {
		return nil, st
	}
	return &tokenbrokerv1.DeleteSystemUserRequestResponse{}, nil
}

func (s *systemUserService) GetSystemUserRequest(ctx context.Context, req *tokenbrokerv1.GetSystemUserRequestRequest) (*tokenbrokerv1.GetSystemUserRequestResponse, error) {
	caller, _ := CallerFromContext(ctx)
	r, err := s.broker.GetSystemUserRequest(ctx, broker.SystemUserLookup{
		Caller: caller, Client: req.GetClient(), ID: req.GetId(), CustomerOrg: req.GetCustomerOrg(),
		ExternalRef: req.GetExternalRef(), Agent: req.GetAgent(),
	})
	if st := s.done(ctx, tokenbrokerv1.SystemUserService_GetSystemUserRequest_FullMethodName, req.GetClient(), req.GetCustomerOrg(), req.GetExternalRef(), err); st != nil {
		return nil, st
	}
	return &tokenbrokerv1.GetSystemUserRequestResponse{Request: toProtoRequest(r, req.GetClient(), req.GetAgent())}, nil
}

func toProtoRequest(r *altinn.Request, client string, agent bool) *tokenbrokerv1.SystemUserRequest {
	out := &tokenbrokerv1.SystemUserRequest{
		Id: r.ID, Client: client, SystemId: r.SystemID, CustomerOrg: r.PartyOrgNo, ExternalRef: r.ExternalRef,
		Status: statusOf(r), ConfirmUrl: r.ConfirmURL, RedirectUrl: r.RedirectURL, Agent: agent,
	}
	for _, right := range r.Rights {
		for _, a := range right.Resource {
			out.Rights = append(out.Rights, a.Value)
		}
	}
	for _, p := range r.AccessPackages {
		out.AccessPackages = append(out.AccessPackages, p.URN)
	}
	if !r.Created.IsZero() {
		out.Created = timestamppb.New(r.Created)
	}
	return out
}

// statusOf compares Altinn's status case-insensitively (its documentation
// and its code disagree on case). A request Altinn flags timedOut is
// TIMED_OUT whatever its status: Altinn sets the flag after 180 days and
// leaves the status New (RequestRepository.cs); an accepted request stays
// ACCEPTED, as its system user exists.
func statusOf(r *altinn.Request) tokenbrokerv1.SystemUserRequestStatus {
	if r.TimedOut && !strings.EqualFold(r.Status, "accepted") {
		return tokenbrokerv1.SystemUserRequestStatus_SYSTEM_USER_REQUEST_STATUS_TIMED_OUT
	}
	switch strings.ToLower(r.Status) {
	case "new":
		return tokenbrokerv1.SystemUserRequestStatus_SYSTEM_USER_REQUEST_STATUS_NEW
	case "accepted":
		return tokenbrokerv1.SystemUserRequestStatus_SYSTEM_USER_REQUEST_STATUS_ACCEPTED
	case "rejected":
		return tokenbrokerv1.SystemUserRequestStatus_SYSTEM_USER_REQUEST_STATUS_REJECTED
	case "denied":
		return tokenbrokerv1.SystemUserRequestStatus_SYSTEM_USER_REQUEST_STATUS_DENIED
	case "timedout":
		return tokenbrokerv1.SystemUserRequestStatus_SYSTEM_USER_REQUEST_STATUS_TIMED_OUT
	default:
		return tokenbrokerv1.SystemUserRequestStatus_SYSTEM_USER_REQUEST_STATUS_UNSPECIFIED
	}
}

func (s *systemUserService) ListSystemUserRequests(ctx context.Context, req *tokenbrokerv1.ListSystemUserRequestsRequest) (*tokenbrokerv1.ListSystemUserRequestsResponse, error) {
	caller, _ := CallerFromContext(ctx)
	list, next, err := s.broker.ListSystemUserRequests(ctx, caller, req.GetClient(), req.GetAgent(), req.GetPageToken())
	if st := s.done(ctx, tokenbrokerv1.SystemUserService_ListSystemUserRequests_FullMethodName, req.GetClient(), "", "", err); st != nil {
		return nil, st
	}
	out := &tokenbrokerv1.ListSystemUserRequestsResponse{NextPageToken: next}
	for i := range list {
		out.Requests = append(out.Requests, toProtoRequest(&list[i], req.GetClient(), req.GetAgent()))
	}
	return out, nil
}

func (s *systemUserService) ListSystemUsers(ctx context.Context, req *tokenbrokerv1.ListSystemUsersRequest) (*tokenbrokerv1.ListSystemUsersResponse, error) {
	caller, _ := CallerFromContext(ctx)
	list, next, err := s.broker.ListSystemUsers(ctx, caller, req.GetClient(), req.GetPageToken())
	if st := s.done(ctx, tokenbrokerv1.SystemUserService_ListSystemUsers_FullMethodName, req.GetClient(), "", "", err); st != nil {
		return nil, st
	}
	out := &tokenbrokerv1.ListSystemUsersResponse{NextPageToken: next}
	for _, u := range list {
		if u.IsDeleted {
			continue
		}
		su := &tokenbrokerv1.SystemUser{Id: u.ID, SystemId: u.SystemID, CustomerOrg: u.ReporteeOrgNo, ExternalRef: u.ExternalRef,
			Agent: strings.EqualFold(u.UserType, "agent"), IntegrationTitle: u.IntegrationTitle}
		if !u.Created.IsZero() {
			su.Created = timestamppb.New(u.Created)
		}
		out.SystemUsers = append(out.SystemUsers, su)
	}
	return out, nil
}

func (s *systemUserService) RegisterSystem(ctx context.Context, req *tokenbrokerv1.RegisterSystemRequest) (*tokenbrokerv1.RegisterSystemResponse, error) {
	caller, _ := CallerFromContext(ctx)
	id, err := s.broker.RegisterSystem(ctx, broker.SystemRegistration{
		Caller: caller, Client: req.GetClient(), Name: req.GetName(), Description: req.GetDescription(),
		Rights: req.GetRights(), AccessPackages: req.GetAccessPackages(), RedirectURLs: req.GetAllowedRedirectUrls(), Update: req.GetUpdate(),
		IsVisible: req.IsVisible,
	})
	if st := s.done(ctx, tokenbrokerv1.SystemUserService_RegisterSystem_FullMethodName, req.GetClient(), "", "", err); st != nil {
		return nil, st
	}
	return &tokenbrokerv1.RegisterSystemResponse{SystemId: id}, nil
}

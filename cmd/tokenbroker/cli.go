package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenbroker/tokenbroker/broker/keyring"
	"github.com/tokenbroker/tokenbroker/broker/maskinporten"
	"github.com/tokenbroker/tokenbroker/broker/orgno"
	tokenbrokerclient "github.com/tokenbroker/tokenbroker/client"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server/daemon"
)

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, " ") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// requestFlags are the GetToken fields shared by token and explain.
type requestFlags struct {
	client, org, externalRef, resource string
	scopes                             stringList
}

func (r *requestFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&r.client, "client", "", "configured client name (may be empty with one client)")
	fs.StringVar(&r.org, "org", "", "customer organisation number (required)")
	fs.Var(&r.scopes, "scope", "scope (repeat for several; required)")
	fs.StringVar(&r.externalRef, "external-ref", "", "external reference of the system user")
	fs.StringVar(&r.resource, "resource", "", "audience restriction (absolute URI)")
}

func (r *requestFlags) check() error {
	if r.org == "" || len(r.scopes) == 0 {
		return errors.New("--org and at least one --scope are required")
	}
	return nil
}

// runToken asks a running broker for a token and describes it. The token
// itself is printed only with --raw.
func runToken(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var rf requestFlags
	rf.register(fs)
	addr := fs.String("addr", "127.0.0.1:50051", "broker address")
	unixPath := fs.String("unix", "", "broker unix socket (instead of --addr)")
	cacert := fs.String("cacert", "", "CA of the broker's certificate (mTLS)")
	cert := fs.String("cert", "", "client certificate (mTLS; without it the connection is plaintext)")
	key := fs.String("key", "", "client key (mTLS)")
	minValidity := fs.Duration("min-validity", 0, "the token must live at least this long")
	raw := fs.Bool("raw", false, "print only the token itself, for scripts")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the broker")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := rf.check(); err != nil {
		return fmt.Errorf("token: %w", err)
	}
	var conn *grpc.ClientConn
	var err error
	switch {
	case *unixPath != "":
		conn, err = tokenbrokerclient.DialUnix(*unixPath)
	case *cert != "":
		conn, err = tokenbrokerclient.DialMTLS(*addr, *cacert, *cert, *key)
	default:
		conn, err = tokenbrokerclient.DialInsecure(*addr)
	}
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	defer conn.Close()
	req := &tokenbrokerv1.GetTokenRequest{Client: rf.client, CustomerOrg: rf.org, Scopes: rf.scopes, ExternalRef: rf.externalRef, Resource: rf.resource}
	if *minValidity > 0 {
		req.MinValidity = durationpb.New(*minValidity)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	resp, err := tokenbrokerv1.NewTokenBrokerServiceClient(conn).GetToken(ctx, req)
	if err != nil {
		return describeError(err)
	}
	if *raw {
		fmt.Fprintln(stdout, resp.GetAccessToken())
		return nil
	}
	exp := resp.GetExpiresAt().AsTime()
	fmt.Fprintf(stdout, "client:        %s\nkey id:        %s\ncustomer org:  %s\nscopes:        %s\ncached:        %v\n",
		resp.GetClient(), resp.GetKeyId(), resp.GetCustomerOrg(), strings.Join(resp.GetScopes(), " "), resp.GetCached())
	fmt.Fprintf(stdout, "systemuser id: %s\nsystem id:     %s\nexpires at:    %s (in %s)\n",
		resp.GetSystemuserId(), resp.GetSystemId(), exp.UTC().Format(time.RFC3339), time.Until(exp).Round(time.Second))
	if hdr, claims, ok := decodeJWT(resp.GetAccessToken()); ok {
		fmt.Fprintf(stdout, "token header:\n%s\ntoken claims:\n%s\n", hdr, claims)
	}
	fmt.Fprintln(stdout, "(the token itself is printed only with --raw)")
	return nil
}

// describeError turns a gRPC error into one readable error: code, message
// and Maskinporten's codes when the broker attached them.
func describeError(err error) error {
	st := status.Convert(err)
	msg := fmt.Sprintf("%s: %s", st.Code(), st.Message())
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			msg += fmt.Sprintf(" [%s %s %v]", d.GetDomain(), d.GetReason(), d.GetMetadata())
		case *errdetails.RetryInfo:
			msg += fmt.Sprintf(" [retry in %v]", d.GetRetryDelay().AsDuration())
		}
	}
	return errors.New(msg)
}

// decodeJWT pretty-prints the header and claims of a JWT, unverified.
func decodeJWT(tok string) (header, claims string, ok bool) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return "", "", false
	}
	var out [2]string
	for i := range out {
		raw, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			return "", "", false
		}
		var v any
		if json.Unmarshal(raw, &v) != nil {
			return "", "", false
		}
		b, _ := json.MarshalIndent(v, "  ", "  ")
		out[i] = "  " + string(b)
	}
	return out[0], out[1], true
}

// runExplain prints the grant the broker would send for a request: header,
// claims, endpoint. It signs nothing and prints no key.
func runExplain(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var rf requestFlags
	rf.register(fs)
	configPath := fs.String("config", "", "path of the YAML config file (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *configPath == "" {
		return errors.New("explain: --config is required")
	}
	if err := rf.check(); err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	org, err := orgno.Parse(rf.org)
	if err != nil {
		return fmt.Errorf("explain: --org %q: %v", rf.org, err)
	}
	cfg, err := daemon.Load(*configPath)
	if err != nil {
		return err
	}
	var cc *daemon.ClientConfig
	for i := range cfg.Clients {
		if cfg.Clients[i].Name == rf.client || (rf.client == "" && len(cfg.Clients) == 1) {
			cc = &cfg.Clients[i]
		}
	}
	if cc == nil {
		return fmt.Errorf("explain: no client %q in the config (name one with --client)", rf.client)
	}
	env, err := cfg.Environment()
	if err != nil {
		return err
	}
	key, err := daemon.OpenKey(cc.ActiveKey(), filepath.Dir(*configPath))
	if err != nil {
		return fmt.Errorf("explain: clients %s key: %w", cc.Name, err)
	}
	defer key.Close()
	mp, err := maskinporten.New(maskinporten.Config{ClientID: cc.ClientID, Key: key, Environment: env,
		GrantLifetime: time.Duration(cfg.Maskinporten.GrantLifetime), ResourceAsString: cc.ResourceAsString})
	if err != nil {
		return err
	}
	claims, err := mp.Grant(maskinporten.Request{Scopes: maskinporten.SortedScopes(rf.scopes), CustomerOrg: org,
		ExternalRef: rf.externalRef, Resource: rf.resource}, time.Now())
	if err != nil {
		return err
	}
	hdr, _ := json.MarshalIndent(map[string]string{"alg": string(key.Algorithm), "kid": key.KeyID}, "  ", "  ")
	body, _ := json.MarshalIndent(claims, "  ", "  ")
	fmt.Fprintf(stdout, "client %s (client_id %s), %s key %s\nPOST %s (form: grant_type=%s, assertion=<signed grant>)\n",
		cc.Name, cc.ClientID, key.Backend, key.KeyID, env.TokenURL, maskinporten.GrantType)
	fmt.Fprintf(stdout, "grant header:\n  %s\ngrant claims (jti, iat and exp are fresh for every grant):\n  %s\n(not signed, not sent)\n", hdr, body)
	return nil
}

// runCheck validates a config file, loads every key and prints what it
// found; it fails with the first problem.
func runCheck(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "path of the YAML config file (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *configPath == "" {
		return errors.New("check: --config is required")
	}
	cfg, err := daemon.Load(*configPath)
	if err != nil {
		return err
	}
	baseDir := filepath.Dir(*configPath)
	env, err := cfg.Environment()
	if err != nil {
		return err
	}
	var transport string
	if cfg.Insecure {
		transport = "plaintext on loopback (insecure)"
	} else if transport, err = daemon.CheckTLS(cfg.TLS, baseDir); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "config %s: listen %s (%s), environment %s (token URL %s), %d policy rules\n",
		*configPath, cfg.Listen, transport, env.Name, env.TokenURL, len(cfg.Policy))
	for i, c := range cfg.Clients {
		for _, kc := range c.KeyList() {
			key, err := daemon.OpenKey(kc, baseDir)
			if err != nil {
				return fmt.Errorf("clients[%d] (%s) key %q: %w", i, c.Name, kc.KID, err)
			}
			_ = key.Close() // opening it was the check
			expiry := "expiry not configured"
			if t, _ := kc.Expiry(); !t.IsZero() {
				expiry = fmt.Sprintf("expires %s (in %d days)", t.UTC().Format(time.DateOnly), int(time.Until(t).Hours()/24))
				if time.Until(t) < keyring.ExpiryWarning {
					expiry += ": register a new key and rotate"
				}
			}
			state := ""
			if len(c.KeyList()) > 1 && kc.Active {
				state = " (active)"
			}
			fmt.Fprintf(stdout, "client %s: client_id %s, kid %s%s, %s backend, %s, %s\n",
				c.Name, c.ClientID, key.KeyID, state, key.Backend, key.Algorithm, expiry)
		}
		if s := daemon.RotationSummary(c); s != "" {
			fmt.Fprintln(stdout, s)
		}
	}
	ss, err := daemon.CheckSelfService(cfg, baseDir)
	if err != nil {
		return err
	}
	if ss != "" {
		fmt.Fprintln(stdout, ss)
	}
	fmt.Fprintln(stdout, "ok")
	return nil
}

package server

import (
	"context"
	"crypto/rand"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	protobuf "google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/tokenbroker/tokenbroker/broker/audit"
)

// lenientCodec is the proto codec, except that a request it cannot decode
// (invalid UTF-8 in a string at any depth: nested messages, repeated
// fields, map keys and values; or bytes that are not protobuf at all) is
// not an error: gRPC would turn any decoding error into Internal. Instead
// the message is left empty and marked with the reason, and the
// badMessage interceptors answer InvalidArgument naming the field.
type lenientCodec struct{ base encoding.CodecV2 }

func newLenientCodec() encoding.CodecV2 {
	return lenientCodec{base: encoding.GetCodecV2(proto.Name)}
}

func (c lenientCodec) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }
func (c lenientCodec) Name() string                           { return proto.Name }

func (c lenientCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.base.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(protobuf.Message)
	if !ok {
		return err
	}
	field, reason := findBadField(data.Materialize(), m.ProtoReflect().Descriptor(), "")
	if field == "" {
		field, reason = "request", "not a valid protobuf message"
	}
	protobuf.Reset(m)
	mark := protowire.AppendTag(nil, markNumber, protowire.BytesType)
	mark = protowire.AppendBytes(mark, append(append(markNonce[:], field+"\x00"...), reason...))
	m.ProtoReflect().SetUnknown(mark)
	return nil
}

// markNumber is the field number of the mark, kept among the message's
// unknown fields. markNonce, random per process, makes the mark
// impossible for a client to send.
const markNumber = protowire.MaxValidNumber

var markNonce = func() (n [16]byte) {
	rand.Read(n[:])
	return n
}()

// badField returns the field and reason the codec marked m with, if it
// did.
func badField(m any) (field, reason string, bad bool) {
	pm, ok := m.(protobuf.Message)
	if !ok {
		return "", "", false
	}
	b := pm.ProtoReflect().GetUnknown()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", "", false
		}
		vn := protowire.ConsumeFieldValue(num, typ, b[n:])
		if vn < 0 {
			return "", "", false
		}
		if num == markNumber && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(b[n:])
			if rest, ok := strings.CutPrefix(string(v), string(markNonce[:])); ok {
				field, reason, _ := strings.Cut(rest, "\x00")
				return field, reason, true
			}
		}
		b = b[n+vn:]
	}
	return "", "", false
}

// findBadField walks wire-format message b of type md and returns the path
// of the first string field (at any depth) that is not valid UTF-8, or of
// the first field whose bytes do not parse, with the reason; "" when it
// finds none.
func findBadField(b []byte, md protoreflect.MessageDescriptor, path string) (field, reason string) {
	name := func(fd protoreflect.FieldDescriptor) string {
		if path == "" {
			return string(fd.Name())
		}
		return path + "." + string(fd.Name())
	}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return orRequest(path), "not a valid protobuf message"
		}
		vn := protowire.ConsumeFieldValue(num, typ, b[n:])
		if vn < 0 {
			if fd := md.Fields().ByNumber(num); fd != nil {
				return name(fd), "not a valid protobuf value"
			}
			return orRequest(path), "not a valid protobuf message"
		}
		if fd := md.Fields().ByNumber(num); fd != nil && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(b[n:])
			switch fd.Kind() {
			case protoreflect.StringKind:
				if !utf8.Valid(v) {
					return name(fd), "not valid UTF-8"
				}
			case protoreflect.MessageKind:
				if f, r := findBadField(v, fd.Message(), name(fd)); f != "" {
					return f, r
				}
			}
		}
		b = b[n+vn:]
	}
	return "", ""
}

func orRequest(path string) string {
	if path == "" {
		return "request"
	}
	return path
}

// badMessageUnary answers InvalidArgument, naming the field, for a request
// the codec could not decode.
func (s *Server) badMessageUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if field, reason, bad := badField(req); bad {
		caller, _ := CallerFromContext(ctx)
		s.auditRefusal(ctx, caller, info.FullMethod, nil, audit.Invalid, codes.InvalidArgument, field+": "+reason)
		return nil, invalidArgument(field, reason)
	}
	return h(ctx, req)
}

// badMessageStream is badMessageUnary for every message of a stream.
func (s *Server) badMessageStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	return h(srv, checkedStream{ss})
}

type checkedStream struct{ grpc.ServerStream }

func (c checkedStream) RecvMsg(m any) error {
	if err := c.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if field, reason, bad := badField(m); bad {
		return invalidArgument(field, reason)
	}
	return nil
}

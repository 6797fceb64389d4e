package server

import (
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	protobuf "google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// lenientCodec is the proto codec, except that a request whose top-level
// string fields hold invalid UTF-8 is decoded with those bytes replaced by
// U+FFFD instead of failing. gRPC turns any decoding failure into Internal;
// this way the broker's validation sees the field and answers
// InvalidArgument naming it.
type lenientCodec struct{ base encoding.CodecV2 }

func newLenientCodec() encoding.CodecV2 {
	return lenientCodec{base: encoding.GetCodecV2(proto.Name)}
}

func (c lenientCodec) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }
func (c lenientCodec) Name() string                           { return proto.Name }

func (c lenientCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.base.Unmarshal(data, v)
	if err == nil || !strings.Contains(err.Error(), "UTF-8") {
		return err
	}
	m, ok := v.(protobuf.Message)
	if !ok {
		return err
	}
	fixed, ok := replaceInvalidUTF8(data.Materialize(), m.ProtoReflect().Descriptor())
	if !ok {
		return err
	}
	protobuf.Reset(m)
	return protobuf.Unmarshal(fixed, m)
}

// replaceInvalidUTF8 rewrites the top-level string fields of a wire-format
// message of type md so that they hold valid UTF-8.
func replaceInvalidUTF8(b []byte, md protoreflect.MessageDescriptor) ([]byte, bool) {
	out := make([]byte, 0, len(b))
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false
		}
		vn := protowire.ConsumeFieldValue(num, typ, b[n:])
		if vn < 0 {
			return nil, false
		}
		fd := md.Fields().ByNumber(num)
		if typ == protowire.BytesType && fd != nil && fd.Kind() == protoreflect.StringKind {
			v, _ := protowire.ConsumeBytes(b[n:])
			if !utf8.Valid(v) {
				out = protowire.AppendTag(out, num, typ)
				out = protowire.AppendString(out, strings.ToValidUTF8(string(v), "\uFFFD"))
				b = b[n+vn:]
				continue
			}
		}
		out = append(out, b[:n+vn]...)
		b = b[n+vn:]
	}
	return out, true
}

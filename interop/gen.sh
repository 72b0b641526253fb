#!/usr/bin/env bash
# Regenerates interop/echopb from proto/grpctunnel/testing/v1/echo.proto.
#
# Not run by CI: the generated code is checked in. Run it by hand after
# changing echo.proto. Needs:
#   - protoc (Debian: apt-get install -y protobuf-compiler), with the
#     well-known types (google/protobuf/any.proto) on its include path;
#   - protoc-gen-go      v1.36.12: go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
#   - protoc-gen-go-grpc v1.6.2:   go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
#     (both on PATH, e.g. "$(go env GOPATH)/bin").
#
# The proto file has no go_package option; the Go import path is given with
# protoc's M flags instead, so the proto itself stays untouched.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
proto_rel="grpctunnel/testing/v1/echo.proto"
gopkg="grpctunnel-interop/echopb"

export PATH="$(go env GOPATH)/bin:$PATH"

protoc \
  -I "$repo/proto" \
  --go_out="$here" \
  --go_opt=module=grpctunnel-interop \
  --go_opt="M${proto_rel}=${gopkg}" \
  --go-grpc_out="$here" \
  --go-grpc_opt=module=grpctunnel-interop \
  --go-grpc_opt="M${proto_rel}=${gopkg}" \
  "$repo/proto/$proto_rel"

echo "generated $here/echopb" >&2

#!/usr/bin/env bash
# tools/gateway/build.sh OUT_DIR SRC_ROOT: generates the REST gateway from our protos with
# Debian's grpc-gateway 1.6.4 (protoc-gen-go + protoc-gen-grpc-gateway + protoc-gen-swagger)
# and builds it offline (GO111MODULE=off, GOPATH = OUT_DIR/gopath + /usr/share/gocode).
# Writes OUT_DIR/hm-gateway and OUT_DIR/<area>.swagger.json (the OpenAPI 2.0 documents;
# docs/openapi/ holds the committed copies, checked against these by tests/deploy). Called by
# tools/gateway/meson.build.
set -euo pipefail
out=$(realpath -m "${1:?OUT_DIR}")
src=$(realpath "${2:?SRC_ROOT}")
googleapis=/usr/share/gocode/src/github.com/grpc-ecosystem/grpc-gateway/third_party/googleapis
pkg=hmgw/gen # Go import path prefix of the generated packages

gopath="$out/gopath"
gen="$gopath/src/$pkg"
rm -rf "$gen" "$gopath/src/hmgw/cmd"
mkdir -p "$gen" "$gopath/src/hmgw/cmd/hm-gateway" "$out/swagger"

# The protos the gateway serves (every one with google.api.http bindings) and what they import.
protos=(hospitality/common/v1/common.proto hospitality/common/v1/domain.proto
	hospitality/events/v1/events.proto
	hospitality/guest/v1/guest.proto hospitality/booking/v1/booking.proto
	hospitality/recommender/v1/recommender.proto hospitality/marketing/v1/marketing.proto
	hospitality/gamification/v1/gamification.proto hospitality/privacy/v1/privacy.proto)
# Our protos carry no go_package: map each to a package under $pkg (M options).
# The well-known types map to the APIv1 packages of Debian's golang-goprotobuf-dev and genproto
# (protoc's own go_package names google.golang.org/protobuf, which bookworm ships apart).
maps="Mgoogle/protobuf/timestamp.proto=github.com/golang/protobuf/ptypes/timestamp"
maps+=",Mgoogle/protobuf/duration.proto=github.com/golang/protobuf/ptypes/duration"
maps+=",Mgoogle/protobuf/wrappers.proto=github.com/golang/protobuf/ptypes/wrappers"
maps+=",Mgoogle/protobuf/any.proto=github.com/golang/protobuf/ptypes/any"
maps+=",Mgoogle/protobuf/struct.proto=github.com/golang/protobuf/ptypes/struct"
maps+=",Mgoogle/protobuf/empty.proto=github.com/golang/protobuf/ptypes/empty"
maps+=",Mgoogle/protobuf/descriptor.proto=github.com/golang/protobuf/protoc-gen-go/descriptor"
maps+=",Mgoogle/protobuf/field_mask.proto=google.golang.org/genproto/protobuf/field_mask,"
for p in "${protos[@]}"; do maps+="M$p=$pkg/$(dirname "$p"),"; done

cd "$src/proto"
for p in "${protos[@]}"; do
	protoc -I . -I "$googleapis" -I /usr/include \
		--go_out="${maps}plugins=grpc:$gen" \
		--grpc-gateway_out="${maps}logtostderr=true:$gen" "$p"
done
# The generators place files by proto path, under the import path prefix: flatten to $gen.
if [ -d "$gen/$pkg" ]; then
	cp -r "$gen/$pkg/." "$gen/"
	rm -rf "${gen:?}/hmgw"
fi
# One OpenAPI (Swagger 2.0) document per service proto (the generator merges only protos of one
# package), flattened to OUT_DIR/<area>.swagger.json.
for p in "${protos[@]}"; do
	case $p in hospitality/common/* | hospitality/events/*) continue ;; esac
	protoc -I . -I "$googleapis" -I /usr/include \
		--swagger_out="logtostderr=true:$out/swagger" "$p"
	area=$(basename "$(dirname "$(dirname "$p")")")
	cp "$out/swagger/${p%.proto}.swagger.json" "$out/$area.swagger.json"
done

cp "$src/tools/gateway/main.go" "$gopath/src/hmgw/cmd/hm-gateway/main.go"
# The user's build cache when there is one (build-asan and build-test then share it), else ours.
cache=$(go env GOCACHE 2>/dev/null || true)
case $cache in /*) mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ] || cache="$out/gocache" ;; *) cache="$out/gocache" ;; esac
export GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOCACHE="$cache" \
	GOFLAGS=-trimpath GOPROXY=off CGO_ENABLED=0
go build -o "$out/hm-gateway.tmp" hmgw/cmd/hm-gateway
mv "$out/hm-gateway.tmp" "$out/hm-gateway"

# A static tokenbroker binary on an empty base image, running as a non-root
# user. Build: docker build -t tokenbroker .
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/tokenbroker ./cmd/tokenbroker

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/tokenbroker /tokenbroker
USER 65532:65532
# gRPC and the operator endpoints (/metrics, /healthz, /readyz).
EXPOSE 50051 8080
ENTRYPOINT ["/tokenbroker"]
CMD ["serve", "--config", "/etc/tokenbroker/tokenbroker.yaml"]

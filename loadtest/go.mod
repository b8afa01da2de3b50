module github.com/allot/allot/loadtest

go 1.26.0

replace (
	github.com/allot/allot/cmd/allot => ../cmd/allot
	github.com/allot/allot/pkg/events => ../pkg/events
	github.com/allot/allot/pkg/keys => ../pkg/keys
	github.com/allot/allot/pkg/mutex => ../pkg/mutex
	github.com/allot/allot/pkg/service => ../pkg/service
	github.com/allot/allot/pkg/testenv => ../pkg/testenv
	github.com/allot/allot/services/meter => ../services/meter
	github.com/allot/allot/services/notifier => ../services/notifier
	github.com/allot/allot/services/ratelimit => ../services/ratelimit
	github.com/allot/allot/services/registry => ../services/registry
)

require (
	github.com/HdrHistogram/hdrhistogram-go v1.4.0
	github.com/Shopify/toxiproxy/v2 v2.5.0
	github.com/allot/allot/cmd/allot v0.0.0
	github.com/allot/allot/pkg/events v0.0.0
	github.com/allot/allot/pkg/keys v0.0.0
	github.com/allot/allot/pkg/service v0.0.0
	github.com/allot/allot/pkg/testenv v0.0.0
	github.com/allot/allot/pkg/usage v0.0.0
	github.com/allot/allot/services/meter v0.0.0
	github.com/allot/allot/services/notifier v0.0.0
	github.com/allot/allot/services/ratelimit v0.0.0
	github.com/allot/allot/services/registry v0.0.0
	github.com/emersion/go-smtp v0.25.1
	github.com/envoyproxy/go-control-plane/envoy v1.40.0
	github.com/google/go-cmp v0.7.0
	github.com/hibiken/asynq v0.26.0
	github.com/nats-io/nats.go v1.55.0
	github.com/redis/go-redis/v9 v9.23.0
	github.com/rs/zerolog v1.28.0
	google.golang.org/grpc v1.85.0
)

require (
	github.com/alicebob/miniredis/v2 v2.40.0 // indirect
	github.com/allot/allot/pkg/mutex v0.0.0 // indirect
	github.com/allot/allot/services/auth v0.0.0 // indirect
	github.com/antithesishq/antithesis-sdk-go v0.8.0-default-no-op // indirect
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/cncf/xds/go v0.0.0-20260202195803-dba9d589def2 // indirect
	github.com/emersion/go-sasl v0.0.0-20241020182733-b788ff22d5a6 // indirect
	github.com/envoyproxy/protoc-gen-validate v1.3.3 // indirect
	github.com/google/go-tpm v0.9.8 // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/gorilla/mux v1.8.0 // indirect
	github.com/hibiken/asynqmon v0.7.2 // indirect
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/mattn/go-colorable v0.1.13 // indirect
	github.com/mattn/go-isatty v0.0.16 // indirect
	github.com/minio/highwayhash v1.0.4 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/nats-io/jwt/v2 v2.8.2 // indirect
	github.com/nats-io/nats-server/v2 v2.15.2 // indirect
	github.com/nats-io/nkeys v0.4.16 // indirect
	github.com/nats-io/nuid v1.0.1 // indirect
	github.com/planetscale/vtprotobuf v0.6.1-0.20240319094008-0393e58bdf10 // indirect
	github.com/prometheus/client_golang v1.25.0 // indirect
	github.com/prometheus/client_model v0.6.3 // indirect
	github.com/prometheus/common v0.72.0 // indirect
	github.com/prometheus/procfs v0.22.0 // indirect
	github.com/robfig/cron/v3 v3.0.1 // indirect
	github.com/rs/xid v1.4.0 // indirect
	github.com/spf13/cast v1.10.0 // indirect
	github.com/wneessen/go-mail v0.7.2 // indirect
	github.com/yuin/gopher-lua v1.1.1 // indirect
	go.uber.org/atomic v1.12.0 // indirect
	go.yaml.in/yaml/v3 v3.0.6 // indirect
	golang.org/x/crypto v0.58.0 // indirect
	golang.org/x/net v0.61.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	golang.org/x/time v0.16.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261104224025-d1e00e9f33ab // indirect
	google.golang.org/protobuf v1.36.12 // indirect
	gopkg.in/tomb.v1 v1.0.0-20141024135613-dd632973f1e7 // indirect
)

replace github.com/allot/allot/services/auth => ../services/auth

replace github.com/allot/allot/pkg/usage => ../pkg/usage

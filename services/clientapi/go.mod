module github.com/myelin-chat/myelin/services/clientapi

go 1.26.8

require (
	github.com/go-chi/chi/v5 v5.5.0
	github.com/jackc/pgx/v5 v5.12.0
	github.com/matrix-org/gomatrixserverlib v0.0.0-20250813150445-9f5070a65744
	github.com/myelin-chat/myelin/pkg v0.0.0
	github.com/myelin-chat/myelin/proto v0.0.0
	github.com/myelin-chat/myelin/services/keyserver v0.0.0
	github.com/myelin-chat/myelin/services/presence v0.0.0
	github.com/myelin-chat/myelin/services/roomserver v0.0.0
	github.com/nats-io/nats.go v1.55.0
	github.com/tidwall/sjson v1.2.5
	go.uber.org/zap v1.28.0
	golang.org/x/crypto v0.58.0
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
	maunium.net/go/mautrix v0.31.0
)

require (
	filippo.io/edwards25519 v1.2.0 // indirect
	github.com/antithesishq/antithesis-sdk-go v0.8.0-default-no-op // indirect
	github.com/google/go-tpm v0.9.8 // indirect
	github.com/hashicorp/go-set/v3 v3.0.0 // indirect
	github.com/jackc/pgpassfile v1.0.0 // indirect
	github.com/jackc/pgservicefile v0.0.0-20240606120523-5a60cdf6a761 // indirect
	github.com/jackc/puddle/v2 v2.2.3 // indirect
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/matrix-org/util v0.0.0-20221111132719-399730281e66 // indirect
	github.com/mattn/go-colorable v0.1.14 // indirect
	github.com/mattn/go-isatty v0.0.20 // indirect
	github.com/minio/highwayhash v1.0.4 // indirect
	github.com/nats-io/jwt/v2 v2.8.2 // indirect
	github.com/nats-io/nats-server/v2 v2.15.2 // indirect
	github.com/nats-io/nkeys v0.4.16 // indirect
	github.com/nats-io/nuid v1.0.1 // indirect
	github.com/oleiade/lane/v2 v2.0.0 // indirect
	github.com/rs/zerolog v1.35.1 // indirect
	github.com/sirupsen/logrus v1.9.3 // indirect
	github.com/tidwall/gjson v1.19.0 // indirect
	github.com/tidwall/match v1.1.1 // indirect
	github.com/tidwall/pretty v1.2.1 // indirect
	go.mau.fi/util v0.10.1 // indirect
	go.uber.org/multierr v1.10.0 // indirect
	golang.org/x/exp v0.0.0-20260908205506-85c1c2202aba // indirect
	golang.org/x/image v0.48.0 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sync v0.25.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/text v0.44.0 // indirect
	golang.org/x/time v0.16.0 // indirect
)

replace (
	github.com/myelin-chat/myelin/pkg => ../../pkg
	github.com/myelin-chat/myelin/proto => ../../proto
	github.com/myelin-chat/myelin/services/appservice => ../appservice
	github.com/myelin-chat/myelin/services/clientapi => ../clientapi
	github.com/myelin-chat/myelin/services/fedreceiver => ../fedreceiver
	github.com/myelin-chat/myelin/services/fedsender => ../fedsender
	github.com/myelin-chat/myelin/services/keyserver => ../keyserver
	github.com/myelin-chat/myelin/services/media => ../media
	github.com/myelin-chat/myelin/services/presence => ../presence
	github.com/myelin-chat/myelin/services/roomserver => ../roomserver
)

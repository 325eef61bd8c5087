module github.com/myelin-chat/myelin

go 1.26.8

require (
	github.com/myelin-chat/myelin/pkg v0.0.0
	github.com/myelin-chat/myelin/proto v0.0.0
	github.com/myelin-chat/myelin/services/appservice v0.0.0
	github.com/myelin-chat/myelin/services/clientapi v0.0.0
	github.com/myelin-chat/myelin/services/fedreceiver v0.0.0
	github.com/myelin-chat/myelin/services/fedsender v0.0.0
	github.com/myelin-chat/myelin/services/keyserver v0.0.0
	github.com/myelin-chat/myelin/services/media v0.0.0
	github.com/myelin-chat/myelin/services/presence v0.0.0
	github.com/myelin-chat/myelin/services/roomserver v0.0.0
	gonum.org/v1/plot v0.15.2
)

require (
	codeberg.org/go-fonts/liberation v0.4.1 // indirect
	codeberg.org/go-latex/latex v0.0.1 // indirect
	codeberg.org/go-pdf/fpdf v0.10.0 // indirect
	filippo.io/edwards25519 v1.2.0 // indirect
	git.sr.ht/~sbinet/gg v0.6.0 // indirect
	github.com/ajstarks/svgo v0.0.0-20211024235047-1546f124cd8b // indirect
	github.com/campoy/embedmd v1.0.0 // indirect
	github.com/golang/freetype v0.0.0-20170609003504-e2365dfdc4a0 // indirect
	github.com/mattn/go-colorable v0.1.14 // indirect
	github.com/mattn/go-isatty v0.0.20 // indirect
	github.com/pmezard/go-difflib v1.0.0 // indirect
	github.com/rs/zerolog v1.35.1 // indirect
	github.com/tidwall/gjson v1.19.0 // indirect
	github.com/tidwall/match v1.1.1 // indirect
	github.com/tidwall/pretty v1.2.1 // indirect
	github.com/tidwall/sjson v1.2.5 // indirect
	go.mau.fi/util v0.10.1 // indirect
	golang.org/x/crypto v0.58.0 // indirect
	golang.org/x/exp v0.0.0-20260908205506-85c1c2202aba // indirect
	golang.org/x/image v0.24.0 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	maunium.net/go/mautrix v0.31.0 // indirect
)

replace (
	github.com/myelin-chat/myelin/pkg => ./pkg
	github.com/myelin-chat/myelin/proto => ./proto
	github.com/myelin-chat/myelin/services/appservice => ./services/appservice
	github.com/myelin-chat/myelin/services/clientapi => ./services/clientapi
	github.com/myelin-chat/myelin/services/fedreceiver => ./services/fedreceiver
	github.com/myelin-chat/myelin/services/fedsender => ./services/fedsender
	github.com/myelin-chat/myelin/services/keyserver => ./services/keyserver
	github.com/myelin-chat/myelin/services/media => ./services/media
	github.com/myelin-chat/myelin/services/presence => ./services/presence
	github.com/myelin-chat/myelin/services/roomserver => ./services/roomserver
)

module github.com/allot/allot/services/notifier

go 1.26.0

replace (
	github.com/allot/allot/pkg/events => ../../pkg/events
	github.com/allot/allot/pkg/keys => ../../pkg/keys
	github.com/allot/allot/pkg/mutex => ../../pkg/mutex
	github.com/allot/allot/pkg/service => ../../pkg/service
	github.com/allot/allot/pkg/testenv => ../../pkg/testenv
)

require (
	github.com/emersion/go-sasl v0.0.0-20241020182733-b788ff22d5a6
	github.com/emersion/go-smtp v0.25.1
	github.com/google/go-cmp v0.7.0
	github.com/wneessen/go-mail v0.7.2
)

require golang.org/x/text v0.29.0 // indirect

module github.com/allot/allot/services/notifier

go 1.26.0

replace (
	github.com/allot/allot/pkg/events => ../../pkg/events
	github.com/allot/allot/pkg/keys => ../../pkg/keys
	github.com/allot/allot/pkg/mutex => ../../pkg/mutex
	github.com/allot/allot/pkg/service => ../../pkg/service
	github.com/allot/allot/pkg/testenv => ../../pkg/testenv
)

module github.com/allot/allot/pkg/keys

go 1.26

require github.com/google/go-cmp v0.7.0

module github.com/allot/allot/services/auth

go 1.26.0

require github.com/google/go-cmp v0.7.0

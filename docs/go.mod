module github.com/allot/allot/docs

go 1.26

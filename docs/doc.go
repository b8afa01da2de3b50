// Package docs holds allot's documents: ARCHITECTURE.md, the map of the
// code, and CONTRACT.md, the wire contract. Its only code is the test that
// keeps the map honest: ARCHITECTURE.md must name every Lua script, every
// service and every top-level folder of the repository.
package docs

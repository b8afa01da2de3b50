#!/usr/bin/env bash
# build.sh [OUT] builds the allot command into OUT (default bin/allot) for
# "make run", saying what it does and how far along it is.
#
# On a cold module cache, "go run" or "go build" print nothing but
# "go: downloading" lines for minutes: about 50 modules to download, then
# several hundred packages to compile. This script counts both against
# their totals (the modules cmd/allot/go.mod requires; the packages
# "go list -deps" names) and passes every other line (errors) through.
# A warm build prints two lines and takes seconds.
#
# LDFLAGS, when set, is passed to go build: the Makefile links in what the
# binary says it is (-X github.com/allot/allot/pkg/service.version=...).
set -euo pipefail

out=${1:-bin/allot}
cd "$(dirname "$0")/../.."
start=$SECONDS

# On a terminal the progress rewrites one line; otherwise (CI, a pipe) it
# prints a line now and then.
tty=false
if [ -t 1 ]; then tty=true; fi

elapsed() {
	local s=$((SECONDS - start))
	if [ "$s" -ge 60 ]; then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}

# progress N EVERY MESSAGE: shows MESSAGE on a terminal, and on every
# EVERY-th N otherwise.
progress() {
	if $tty; then
		printf '\r\033[K   %s' "$3"
	elif [ $(($1 % $2)) -eq 0 ]; then
		printf '   %s\n' "$3"
	fi
}

# done_line MESSAGE ends a progress line with MESSAGE.
done_line() {
	if $tty; then printf '\r\033[K'; fi
	printf '   %s\n' "$1"
}

# The modules to download: cmd/allot/go.mod's requirements, less the
# workspace's own modules.
modules=$(awk '/^require \(/ { r = 1; next } r && /^\)/ { r = 0; next }
	r && $1 !~ /^github.com\/allot\/allot/ { n++ } END { print n + 0 }' cmd/allot/go.mod)

echo "== building $out with $(go env GOVERSION) (the first build downloads about $modules modules and compiles for minutes)"

# 1. Find the packages, downloading the modules that hold them.
pkgs=$(mktemp)
trap 'rm -f "$pkgs"' EXIT
go list -deps ./cmd/allot 2>&1 >"$pkgs" | {
	n=0
	while IFS= read -r line; do
		case $line in
		"go: downloading "*)
			n=$((n + 1))
			progress "$n" 5 "downloading modules: $n of about $modules ($(elapsed)): ${line#go: downloading }"
			;;
		*) printf '%s\n' "$line" >&2 ;;
		esac
	done
	if [ "$n" -gt 0 ]; then done_line "downloaded $n modules in $(elapsed)"; fi
}

# 2. Compile; -v names each package as it is compiled (cached ones are
# not compiled, so the count stays below the total on later builds).
total=$(wc -l <"$pkgs")
go build -v -ldflags "${LDFLAGS:-}" -o "$out" ./cmd/allot 2>&1 | {
	n=0
	while IFS= read -r line; do
		if [[ $line =~ ^[A-Za-z0-9._~/+-]+$ ]]; then
			n=$((n + 1))
			progress "$n" 50 "compiling: $n of at most $total packages ($(elapsed)): $line"
		else
			printf '%s\n' "$line" >&2
		fi
	done
	if [ "$n" -gt 0 ]; then done_line "compiled $n of $total packages (the rest were in the build cache)"; fi
}

echo "== built $out in $(elapsed)"

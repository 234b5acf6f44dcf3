#!/usr/bin/env bash
# test_install.sh BUILD SOURCE - `make install` into a staging DESTDIR puts
# the binaries, the library, the headers, tq.pc, the man pages, the bash
# completions and the systemd units where they belong; a program builds
# against the installed tq.pc and runs; `make uninstall` (its manifest)
# removes every file again. The build's own install_manifest.txt is kept
# as it was (a developer's real install stays uninstallable).
set -uo pipefail
build=$(cd "$1" && pwd); src=$(cd "$2" && pwd)
# $3: the build's sanitizers (TQ_SANITIZE), which a program linking its
# library needs too
sanitize=${3:-}
stage=$(mktemp -d /tmp/tq-install-XXXXXX)
manifest=$build/install_manifest.txt
saved=""
[ -f "$manifest" ] && { saved=$stage.manifest; cp "$manifest" "$saved"; }
finish() {
    if [ -n "$saved" ]; then mv "$saved" "$manifest"; else rm -f "$manifest"; fi
    rm -rf "$stage"
}
trap finish EXIT
fail() { echo "test_install: $*"; echo "0 passed, 1 failed"; exit 1; }

DESTDIR=$stage cmake --install "$build" >/dev/null || fail "install failed"
prefix=$(sed -n 's/^prefix=//p' "$build/tq.pc")
root=$stage$prefix
for f in bin/tq bin/tq-broker bin/tq-worker include/tq/tq.h \
         include/tq/tq_client.h share/man/man1/tq.1 \
         share/man/man1/tq-broker.1 share/man/man1/tq-worker.1; do
    [ -e "$root/$f" ] || fail "missing $prefix/$f"
done
pc=$(find "$root" -name tq.pc | head -1)
[ -n "$pc" ] || fail "no tq.pc installed"
grep -q '^Requires.private:' "$pc" || fail "tq.pc has no Requires.private"
ls "$root"/lib*/libtq.so* >/dev/null 2>&1 || ls "$root"/lib/*/libtq.so* \
    >/dev/null 2>&1 || fail "no libtq.so installed"
find "$root" -name 'tq-broker.service' | grep -q . || fail "no tq-broker.service"
find "$root" -path '*completions*' -name 'tq*' | grep -q . ||
    fail "no bash completion"

# a program built against the installed library, with pkg-config
cat > "$stage/prog.c" <<'C'
#include <stdio.h>
#include <tq/tq.h>
int main(void) { printf("%s\n", tq_strerror(TQ_EFULL)); return 0; }
C
pcdir=$(dirname "$pc")
flags=$(PKG_CONFIG_PATH=$pcdir pkg-config --define-prefix --cflags --libs tq) ||
    fail "pkg-config --cflags --libs tq"
cc "$stage/prog.c" ${sanitize:+-fsanitize=$sanitize} $flags -o "$stage/prog" ||
    fail "cannot build against tq.pc"
libdir=$(dirname "$(ls "$root"/lib*/libtq.so "$root"/lib/*/libtq.so 2>/dev/null | head -1)")
out=$(LD_LIBRARY_PATH=$libdir "$stage/prog") || fail "the program did not run"
[ -n "$out" ] || fail "the program printed nothing"

DESTDIR=$stage cmake -P "$src/cmake/uninstall.cmake" "$manifest" >/dev/null ||
    fail "uninstall failed"
left=$(find "$root" -type f -o -type l | grep -v -e "$stage/prog" | head -5)
[ -z "$left" ] || fail "uninstall left: $left"
echo "test_install: installed, built a program against tq.pc ($out), uninstalled"
echo "1 passed, 0 failed"

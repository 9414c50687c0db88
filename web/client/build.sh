#!/usr/bin/env bash
# Builds the browser store into web/client/pkg/: crates/masq-web for
# wasm32-unknown-unknown, wasm-bindgen's ES module glue (--target web), and
# wasm-opt -Oz where binaryen is installed. Needs:
#   rustup target add wasm32-unknown-unknown
#   cargo install wasm-bindgen-cli --version 0.2.130   # = wasm-bindgen in Cargo.lock
# Prints the gzipped size of what a page loads (M11's budget: 1 MB).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
want=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')
if [ "$have" != "$want" ]; then
  echo "wasm-bindgen-cli $want is needed (found: ${have:-none}):"
  echo "  cargo install wasm-bindgen-cli --version $want"
  exit 1
fi
cargo build --profile wasm -p masq-web --target wasm32-unknown-unknown --quiet
wasm=target/wasm32-unknown-unknown/wasm/masq_web.wasm
if command -v wasm-opt >/dev/null 2>&1; then
  # Before wasm-bindgen: Debian's wasm-opt (108) mangles the externref table
  # wasm-bindgen adds, and with --all-features emits encodings Chromium does
  # not read. The features named are the ones rustc's wasm32 target uses.
  wasm-opt -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
    --enable-mutable-globals --enable-multivalue --enable-reference-types \
    "$wasm" -o target/wasm32-unknown-unknown/wasm/masq_web.opt.wasm
  wasm=target/wasm32-unknown-unknown/wasm/masq_web.opt.wasm
else
  echo "(wasm-opt not found: install binaryen for a smaller .wasm)"
fi
rm -rf "$here/pkg"
wasm-bindgen --target web --out-name masq_web --out-dir "$here/pkg" "$wasm"
size() { gzip -9c "$@" | wc -c; }
total=$(cat "$here"/pkg/masq_web_bg.wasm "$here"/pkg/masq_web.js "$here"/masq-client.js "$here"/masq-peer.js "$here"/masq-relay.js | gzip -9c | wc -c)
echo "web/client: wasm $(size "$here/pkg/masq_web_bg.wasm") B gzipped, JS $(cat "$here"/pkg/masq_web.js "$here"/masq-client.js "$here"/masq-peer.js "$here"/masq-relay.js | size) B gzipped, total $total B"

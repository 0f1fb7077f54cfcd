#!/bin/bash -eu
# Builds every cargo-fuzz target for ClusterFuzzLite / OSS-Fuzz: the binaries, each
# target's committed corpus as <target>_seed_corpus.zip and a <target>.options file with
# the limits our own runs use, all into $OUT.
#
# Inside the engines' container this runs as $SRC/build.sh with the project in
# $SRC/tagsplit. Outside one (how we check it), from the project root:
#
#   SRC=$PWD/.. OUT=/tmp/cflite-out WORK=/tmp/cflite-work SANITIZER=address \
#   FUZZING_ENGINE=libfuzzer FUZZING_LANGUAGE=rust ARCHITECTURE=x86_64 \
#   RUSTC_BOOTSTRAP=1 TAGSPLIT_DIR=$PWD bash .clusterfuzzlite/build.sh
#
# (RUSTC_BOOTSTRAP=1 only on a stable toolchain; the engines' image has nightly.)
project=${TAGSPLIT_DIR:-$SRC/tagsplit}
mkdir -p "$OUT"
cd "$project/fuzz"
# cargo fuzz adds the sanitizer (address, the only one the engines support for Rust) and
# the libFuzzer flags itself; debug assertions catch overflow on the way.
cargo fuzz build -O --debug-assertions --sanitizer "${SANITIZER:-address}"
bin=target/x86_64-unknown-linux-gnu/release
for t in $(cargo fuzz list); do
  cp "$bin/$t" "$OUT/"
  rm -f "$OUT/${t}_seed_corpus.zip"
  if command -v zip >/dev/null; then
    (cd "corpus/$t" && zip -q -r "$OUT/${t}_seed_corpus.zip" .)
  else
    (cd "corpus/$t" && python3 -m zipfile -c "$OUT/${t}_seed_corpus.zip" .)
  fi
  printf '[libfuzzer]\nmax_len = 8192\nrss_limit_mb = 2048\ntimeout = 5\n' >"$OUT/$t.options"
done

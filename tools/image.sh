#!/usr/bin/env bash
# Builds the CRMessenger image without a container daemon: cargo builds the two
# binaries, this script lays out the root filesystem (the binaries, the glibc
# libraries `ldd` names with the dynamic loader at its path, CA certificates,
# /etc/passwd and /etc/group with nonroot 65532, an empty /tmp), and tools/ocimage
# writes it, as the Containerfile describes, to an OCI image layout and an
# oci-archive tarball. Same inputs, same manifest digest (printed last).
#
#   tools/image.sh [--variant default|whatsapp-web] [--profile NAME | --release]
#                  [--test-build] [--out DIR] [--name REPOSITORY] [--level 0-9]
#
#   --variant      default: the connector without WhatsApp Web; whatsapp-web: with
#                  the `whatsapp-web` cargo feature (default: default)
#   --profile      cargo profile of the binaries (default: dev); --release = --profile release
#   --test-build   take the binaries of the test build (`cargo test --workspace
#                  --features crmessenger-connector/whatsapp-web`, dev profile) instead
#                  of building them apart: nothing is compiled when the tests ran,
#                  and the image is the whatsapp-web variant
#   --out          output directory (default: $CARGO_TARGET_DIR/image/<variant>-<profile>);
#                  it is replaced. It holds rootfs/ (the Containerfile's build
#                  context), build-args, oci/ (the layout), crmessenger.oci.tar and digest.
#   --name         repository the image is named after (default: ghcr.io/crmessenger/crmessenger)
#   --level        gzip level of the layer (default: 1 for the dev profile, 6 otherwise)
#
# SOURCE_DATE_EPOCH, if set, is every file's mtime and the image's creation time (default 0).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/crmessenger/target}"
# Run from a test (cargo sets these for test processes), cargo would otherwise see
# another environment than the test build's: ring's build script reruns when
# CARGO_MANIFEST_DIR changes, and everything above ring would be compiled again.
unset CARGO_MANIFEST_DIR CARGO_MANIFEST_PATH CARGO_CRATE_NAME CARGO_BIN_NAME CARGO_PRIMARY_PACKAGE \
  CARGO_TARGET_TMPDIR CARGO_RUSTC_CURRENT_DIR OUT_DIR "${!CARGO_PKG_@}" "${!CARGO_BIN_EXE_@}"

variant="" profile=dev test_build=0 out="" name=ghcr.io/crmessenger/crmessenger level=""
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) variant="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    --release) profile=release; shift ;;
    --test-build) test_build=1; shift ;;
    --out) out="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    --level) level="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$test_build" = 1 ]; then
  # The test build has the feature on, so that is the variant it makes.
  [ "${variant:-whatsapp-web}" = whatsapp-web ] && [ "$profile" = dev ] ||
    { echo "image.sh: --test-build makes the whatsapp-web variant in the dev profile" >&2; exit 2; }
  variant=whatsapp-web
fi
variant="${variant:-default}"
case "$variant" in
  default) features=() ;;
  whatsapp-web) features=(--features crmessenger-connector/whatsapp-web) ;;
  *) echo "image.sh: --variant is default or whatsapp-web" >&2; exit 2 ;;
esac
# Fast for dev images (built on every CI run), smaller for release images.
[ -n "$level" ] || { [ "$profile" = dev ] && level=1 || level=6; }
case "$profile" in dev) profile_dir=debug ;; *) profile_dir="$profile" ;; esac
out="${out:-$CARGO_TARGET_DIR/image/$variant-$profile}"

started=$(date +%s.%N)
if [ "$test_build" = 1 ]; then
  # Exactly the test command's build (tools/test.sh): fresh after the tests ran.
  cargo test --workspace --locked --features crmessenger-connector/whatsapp-web --no-run --quiet
else
  cargo build --locked --profile "$profile" -p crmessenger-operator -p crmessenger-connector --bins "${features[@]}" --quiet
fi
bins=("$CARGO_TARGET_DIR/$profile_dir/crmessenger-operator" "$CARGO_TARGET_DIR/$profile_dir/crmessenger-connector")
# The image writer hashes and compresses ~170 MB: optimised, it takes seconds.
cargo build --locked --release -p crmessenger-ocimage --bin ocimage --quiet
ocimage="$CARGO_TARGET_DIR/release/ocimage"

if [ -e "$out" ] && [ -n "$(ls -A "$out")" ] && [ ! -e "$out/build-args" ]; then
  echo "image.sh: $out is not empty and not an earlier output of this script; not replacing it" >&2; exit 1
fi
rm -rf "$out"
rootfs="$out/rootfs"
umask 022
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp"

for bin in "${bins[@]}"; do
  # Debug info out (line numbers in backtraces), symbols kept (function names).
  strip --strip-debug -o "$rootfs/usr/local/bin/$(basename "$bin")" "$bin"
  chmod 0755 "$rootfs/usr/local/bin/$(basename "$bin")"
done

# The shared libraries and the dynamic loader, at the paths `ldd` reports, as
# files (symbolic links followed), so the binaries need nothing from the host.
libs="$(for bin in "${bins[@]}"; do env -u LD_LIBRARY_PATH -u LD_PRELOAD ldd "$bin"; done)"
if grep -q 'not found' <<<"$libs"; then
  echo "image.sh: a library the binaries need is missing:" >&2; grep 'not found' <<<"$libs" >&2; exit 1
fi
while read -r lib; do
  install -D -m 0755 "$lib" "$rootfs$lib"
done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$libs" | sort -u)

install -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
# nonroot's home is /tmp, the one place it may write (an emptyDir in a pod).
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
# /etc/hosts before DNS (glibc's default without this file is the other way round).
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf"
# Fixed modes, so the directory a Containerfile build copies is the layer ocimage writes.
find "$rootfs" -type d -exec chmod 0755 {} +
chmod 1777 "$rootfs/tmp"

version="$(awk -F'"' '/^version = / { print $2; exit }' Cargo.toml)"
tag="$version"
[ "$variant" = default ] || tag="$tag-$variant"
[ "$profile" = release ] || tag="$tag-$profile"
printf 'VERSION=%s\nVARIANT=%s\nPROFILE=%s\n' "$version" "$variant" "$profile" >"$out/build-args"
build_args=()
while read -r arg; do build_args+=(--build-arg "$arg"); done <"$out/build-args"

digest="$("$ocimage" --context "$out" --containerfile Containerfile "${build_args[@]}" \
  --name "$name" --tag "$tag" --layout "$out/oci" --archive "$out/crmessenger.oci.tar" --level "$level")"
echo "$digest" >"$out/digest"

seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
echo "image: $name:$tag ($variant variant, $profile profile, $(du -m "$out/crmessenger.oci.tar" | cut -f1) MB, ${seconds}s)"
echo "image: layout $out/oci, archive $out/crmessenger.oci.tar, rootfs $rootfs"
echo "image: digest $digest"

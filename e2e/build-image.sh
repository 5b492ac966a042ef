#!/usr/bin/env bash
# Builds the image raftkit:<version> without pulling anything (issue 20):
#   1. a minimal Debian bookworm base made with debootstrap (minbase) and
#      `docker import`ed as raftkit-base:bookworm (reused when present; its
#      tarball is cached in target/e2e-base/);
#   2. raftkit-node, raftkit and raftkit-operator built on the host with
#      `cargo build --release`;
#   3. the root Dockerfile's `prebuilt` target on that base, from a small
#      build context holding only the three binaries.
# Prints the image tag on its last line. Exits 0 with "skipped: ..." when
# no Docker engine answers; any other failure is an error.
#
# Environment: RAFTKIT_IMAGE (default raftkit:<workspace version>, with
# -dev appended for RAFTKIT_PROFILE=dev),
# RAFTKIT_PROFILE (default release; `dev` packs the debug binaries `cargo
# test` has built already, for tests that cannot spend a release build),
# RAFTKIT_BASE_IMAGE (default raftkit-base:bookworm), DEBIAN_MIRROR
# (default http://deb.debian.org/debian), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "build-image: $*" >&2; }
die() { say "error: $*"; exit 1; }

if ! command -v docker >/dev/null 2>&1; then
    echo "skipped: the docker command is not installed"
    exit 0
fi
if ! docker info >/dev/null 2>&1; then
    echo "skipped: no Docker engine answers (docker info failed)"
    exit 0
fi

version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml)
[ -n "$version" ] || die "no version under [workspace.package] in Cargo.toml"
base_image=${RAFTKIT_BASE_IMAGE:-raftkit-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
profile=${RAFTKIT_PROFILE:-release}
case $profile in
    release) profile_dir=release ;;
    dev) profile_dir=debug ;;
    *) die "RAFTKIT_PROFILE must be release or dev, not '$profile'" ;;
esac
# A debug build never takes the release tag.
if [ "$profile" = release ]; then image=${RAFTKIT_IMAGE:-raftkit:$version}; else image=${RAFTKIT_IMAGE:-raftkit:$version-dev}; fi
target_dir=${CARGO_TARGET_DIR:-target}
base_dir=$target_dir/e2e-base
context=$target_dir/e2e-image-$profile

# 1. The base image.
make_base_tarball() {
    local tarball=$1 rootfs=$base_dir/rootfs
    if ! command -v debootstrap >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || die "debootstrap is not installed (as root: apt-get install debootstrap)"
        say "installing debootstrap"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    [ "$(id -u)" = 0 ] || die "debootstrap needs root to make the base image"
    rm -rf "$rootfs"
    mkdir -p "$base_dir"
    say "debootstrap --variant=minbase bookworm from $mirror"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$base_dir/debootstrap.log" 2>&1 ||
        { tail -20 "$base_dir/debootstrap.log" >&2; die "debootstrap failed (log: $base_dir/debootstrap.log)"; }
    # What a runtime image does not need: package caches and documentation.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    # The user the image runs as (the uid distroless calls nonroot).
    grep -q '^nonroot:' "$rootfs/etc/passwd" ||
        echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin' >>"$rootfs/etc/passwd"
    grep -q '^nonroot:' "$rootfs/etc/group" || echo 'nonroot:x:65532:' >>"$rootfs/etc/group"
    install -d -o 65532 -g 65532 "$rootfs/home/nonroot"
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
}

if docker image inspect "$base_image" >/dev/null 2>&1; then
    say "base image $base_image present"
else
    tarball=$base_dir/bookworm-minbase.tar
    [ -f "$tarball" ] || make_base_tarball "$tarball"
    say "docker import $tarball as $base_image"
    docker import --message "debian bookworm minbase (e2e/build-image.sh)" "$tarball" "$base_image" >/dev/null
fi

# 2. The binaries.
# Run from a test (testkit::docker::image), this process inherits what
# cargo sets for a test binary (OUT_DIR, CARGO_MANIFEST_DIR, CARGO_PKG_*,
# ...). Build scripts such as ring's watch those names with
# rerun-if-env-changed, so cargo would rebuild ring and all above it: a
# second copy of half the build. They are not ours to pass on.
for v in $(compgen -e); do
    case $v in
        OUT_DIR | CARGO_MANIFEST_* | CARGO_PKG_* | CARGO_CRATE_NAME | CARGO_BIN_NAME | \
            CARGO_BIN_EXE_* | CARGO_PRIMARY_PACKAGE | CARGO_TARGET_TMPDIR | CARGO_RUSTC_CURRENT_DIR)
            unset "$v" ;;
    esac
done
if [ "$profile" = release ]; then
    say "cargo build --release (raftkit-node, raftkit, raftkit-operator)"
    cargo build --release --locked -p raftkit-node -p raftkit-cli -p raftkit-operator \
        --bin raftkit-node --bin raftkit --bin raftkit-operator
else
    # The binaries `cargo test --workspace` builds: the same command resolves
    # the same features (dev-dependencies included), so inside a test run
    # this compiles nothing. A narrower `cargo build -p ...` resolves other
    # features and compiled a second copy of tokio, rustls, kube and the
    # binaries, which filled CI's disk.
    say "cargo test --workspace --no-run (the debug binaries the tests use)"
    cargo test --workspace --no-run --locked >&2
fi

# 3. The image, from a context holding only what the prebuilt target copies.
rm -rf "$context"
mkdir -p "$context/bin" "$context/data"
for b in raftkit-node raftkit raftkit-operator; do
    cp "$target_dir/$profile_dir/$b" "$context/bin/$b"
    # The image ships without debug info (a third of its size otherwise).
    if command -v strip >/dev/null 2>&1; then strip --strip-debug "$context/bin/$b"; fi
done
previous=$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
say "docker build --target prebuilt -t $image"
docker build --quiet \
    --target prebuilt \
    --build-arg BASE_IMAGE="$base_image" \
    --build-arg VERSION="$version" \
    --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    -t "$image" -f Dockerfile "$context" >/dev/null
# The image this tag named before is now dangling: remove it (unless a
# container still uses it), so reruns do not pile up images.
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect --format '{{.Id}}' "$image")" ]; then
    docker rmi "$previous" >/dev/null 2>&1 || true
fi
echo "$image"

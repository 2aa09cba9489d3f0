#!/usr/bin/env bash
# CI STAND-INS, NOT THE REAL IMAGES. This network reaches Debian's package
# mirrors but no image registry, so the three base images the Dockerfile and
# docker-compose.yml name are built here, under their exact tags, from Debian
# bookworm packages:
#   rust:1.95-slim-bookworm          debootstrap minbase + gcc, with this
#                                    machine's Rust toolchain and a pre-filled
#                                    cargo registry (builds run offline)
#   gcr.io/distroless/cc-debian12:nonroot
#                                    libc6, libgcc-s1, libstdc++6,
#                                    ca-certificates, tzdata unpacked with
#                                    dpkg-deb, a nonroot (65532) user, no shell
#   postgres:15-alpine               Debian's PostgreSQL 15, with an entrypoint
#                                    that honours the official image's
#                                    POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB
# Each image carries the label batch-history.standin=<hash of this script>;
# one already built from this very script is kept, so that later runs on the
# same machine reuse it. Work files go to $STANDIN_DIR (/var/tmp/bh-standins).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="$(cat "$here/standins.sh" "$here/postgres-entrypoint.sh" | sha256sum | cut -c1-16)"
work="${STANDIN_DIR:-/var/tmp/bh-standins}"
mirror="http://deb.debian.org/debian"
mkdir -p "$work"

current() {
    [ "$(docker image inspect "$1" --format '{{index .Config.Labels "batch-history.standin"}}' \
        2>/dev/null)" = "$version" ]
}

# `root` (a directory) as image `tag`, with Dockerfile-style `changes`.
import_root() {
    local root="$1" tag="$2"
    shift 2
    local changes=(-c "LABEL batch-history.standin=$version")
    for change in "$@"; do changes+=(-c "$change"); done
    tar -C "$root" --numeric-owner -c . | docker import "${changes[@]}" - "$tag" >/dev/null
    echo "built stand-in $tag ($(du -sh "$root" | cut -f1))"
}

bootstrap() {
    local root="$1" include="$2"
    rm -rf "$root"
    debootstrap --variant=minbase --include="$include" bookworm "$root" "$mirror" \
        >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; return 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
}

rust_tag="rust:1.95-slim-bookworm"
if ! current "$rust_tag"; then
    root="$work/rust"
    bootstrap "$root" gcc,libc6-dev,ca-certificates
    sysroot="$(rustc --print sysroot)"
    mkdir -p "$root/usr/local/rustup" "$root/usr/local/cargo/bin"
    tar -C "$sysroot" --exclude=lib/rustlib/src --exclude=lib/rustlib/rustc-src -c bin lib \
        | tar -C "$root/usr/local/rustup" -x
    for tool in cargo rustc rustdoc; do
        ln -s "/usr/local/rustup/bin/$tool" "$root/usr/local/cargo/bin/$tool"
    done
    # Every crate Cargo.lock names, as this machine's own builds left them.
    cargo fetch --locked --quiet --manifest-path "$here/../../Cargo.toml"
    cp -r "${CARGO_HOME:-$HOME/.cargo}/registry" "$root/usr/local/cargo/registry"
    import_root "$root" "$rust_tag" \
        "ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        "ENV CARGO_HOME=/usr/local/cargo" "ENV CARGO_NET_OFFLINE=true"
    rm -rf "$root"
fi

runtime_tag="gcr.io/distroless/cc-debian12:nonroot"
if ! current "$runtime_tag"; then
    root="$work/runtime"
    debs="$work/runtime-debs"
    rm -rf "$root" "$debs"
    mkdir -p "$root" "$debs"
    (cd "$debs" && apt-get download -qq -o APT::Sandbox::User=root libc6 libgcc-s1 libstdc++6 ca-certificates tzdata)
    for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$root"; done
    # ca-certificates builds its bundle at install time; no shell runs here.
    mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
    chmod 1777 "$root/tmp"
    chown 65532:65532 "$root/home/nonroot"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
        >"$root/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
    # None of these packages brings a shell; their tools go too.
    rm -rf "$root/bin" "$root/usr/bin" "$root/usr/sbin" "$root/sbin" "$root/usr/share/doc"
    import_root "$root" "$runtime_tag" "USER 65532:65532" "WORKDIR /home/nonroot"
    rm -rf "$root" "$debs"
fi

postgres_tag="postgres:15-alpine"
if ! current "$postgres_tag"; then
    root="$work/postgres"
    bootstrap "$root" postgresql-15
    # The Debian package's own cluster is not used: the entrypoint makes one.
    rm -rf "$root/var/lib/postgresql/15" "$root/etc/postgresql/15"
    install -m 755 "$here/postgres-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
    import_root "$root" "$postgres_tag" \
        "ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        "ENV PGDATA=/var/lib/postgresql/data" \
        "ENTRYPOINT [\"docker-entrypoint.sh\"]" "CMD [\"postgres\"]" "EXPOSE 5432"
    rm -rf "$root"
fi
docker image prune -f --filter "label=batch-history.standin" >/dev/null
echo "stand-ins ready in ${SECONDS} s"

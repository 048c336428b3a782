#!/usr/bin/env bash
# Builds the container images and runs each as a user would (docs/installing.md): a read-only root
# with a tmpfs on /tmp, the port published on the host. Checks the demo page, a publish from the
# host (through the container network, which the demo configuration allows) and a stream, byte
# for byte. Not part of scripts/test.sh (it takes minutes). Uses Debian's podman as root:
#   scripts/docker-test.sh            both images: Dockerfile (Debian 12's nginx) and Dockerfile.nginx
#   scripts/docker-test.sh debian     one of them: debian | nginx
#   NGINX_VERSION=1.30.4              the official image's version for Dockerfile.nginx (default 1.30.4)
#   SSE_PODMAN_ROOT=/var/lib/...      podman's storage (default /var/lib/containers/sse-module, its own,
#                                     so that it never mixes with another podman user's storage)
# Podman runs with runc (this machine's crun fails on its cgroups), cgroupfs and the vfs driver.
# debian:12 and debian:12-slim are made with debootstrap when the storage has none (no registry of
# images is reachable here), and so is a stand-in for the official nginx:<version> image when it
# cannot be pulled: nginx.org's release from ../shared/nginx, built with the official image's
# configure options onto debian:12-slim. With the stand-in the official image itself is not tested.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
source scripts/deps.sh

which=${1:-all}
case "$which" in all | debian | nginx) ;; *) echo "usage: $0 [debian|nginx]" >&2; exit 2 ;; esac
nginx_version=${NGINX_VERSION:-1.30.4}
root=${SSE_PODMAN_ROOT:-/var/lib/containers/sse-module}
work="$repo/build/docker"
mkdir -p "$work"

apt_install podman runc debootstrap curl
pm() {
    podman --root "$root" --runroot "/run/containers/$(basename "$root")" --storage-driver vfs \
        --runtime runc --cgroup-manager cgroupfs "$@"
}
limits=(--ulimit nofile=10000:10000 --ulimit nproc=20000:20000)
step_started=$SECONDS
step() {
    echo "== $* ($((SECONDS - step_started)) s since the last step)" >&2
    step_started=$SECONDS
}

# debian:12 and :12-slim, from Debian's own packages (minbase: what apt needs, nothing more).
make_debian_base() {
    pm image exists docker.io/library/debian:12-slim && pm image exists docker.io/library/debian:12 && return
    step "debootstrap bookworm (debian:12 and debian:12-slim)"
    local rootfs="$work/rootfs"
    rm -rf "${rootfs:?}"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
        { tail -20 "$work/debootstrap.log"; exit 1; }
    cat >"$rootfs/etc/apt/sources.list" <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
    rm -rf "${rootfs:?}"/var/cache/apt/archives/*.deb "${rootfs:?}"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | pm import -q --change 'CMD ["bash"]' - docker.io/library/debian:12 >/dev/null
    # -slim as Debian's own: no documentation, manual pages or translations, now or from later packages.
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
        'path-exclude /usr/share/man/*' 'path-exclude /usr/share/groff/*' 'path-exclude /usr/share/info/*' \
        'path-exclude /usr/share/lintian/*' 'path-exclude /usr/share/linda/*' 'path-exclude /usr/share/locale/*' \
        >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim"
    find "${rootfs:?}/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "${rootfs:?}"/usr/share/{man,groff,info,lintian,linda,locale}/*
    tar -C "$rootfs" -c . | pm import -q --change 'CMD ["bash"]' - docker.io/library/debian:12-slim >/dev/null
    rm -rf "${rootfs:?}"
}

# nginx.org's source release of $nginx_version from ../shared/nginx, next to the repository or
# next to its main checkout when this is a git worktree.
shared_tarball() {
    local common dir
    common=$(git -C "$repo" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)
    for dir in "$repo/../shared/nginx" ${common:+"$(dirname "$common")/../shared/nginx"}; do
        [ -f "$dir/nginx-$nginx_version.tar.gz" ] && { echo "$dir/nginx-$nginx_version.tar.gz"; return; }
    done
    return 1
}

# The official nginx image when it can be had, else the stand-in (see above).
make_nginx_base() {
    local image=docker.io/library/nginx:$nginx_version
    pm image exists "$image" && return
    step "pull $image"
    if pm pull -q "$image" >/dev/null 2>"$work/pull.log"; then return; fi
    echo "cannot pull $image ($(tail -1 "$work/pull.log")): building the stand-in" >&2
    local tarball
    tarball=$(shared_tarball) || { echo "no nginx-$nginx_version.tar.gz in ../shared/nginx" >&2; exit 1; }
    local ctx="$work/nginx-standin"
    rm -rf "$ctx"
    mkdir -p "$ctx"
    cp "$tarball" "$ctx/"
    cp scripts/docker/nginx-standin.Dockerfile "$ctx/Dockerfile"
    step "build the stand-in for $image"
    pm build -q "${limits[@]}" --build-arg NGINX_VERSION="$nginx_version" -t "$image" "$ctx" >"$work/standin.log" 2>&1 ||
        { tail -30 "$work/standin.log"; exit 1; }
    rm -rf "$ctx"
}

free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 30000))
        ss -Htln "sport = :$port" | grep -q . || { echo "$port"; return; }
    done
}

containers=()
cleanup() {
    for c in "${containers[@]}"; do pm rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

passes=0 failures=0
check() {   # check NAME GOT WANT
    if [ "$2" == "$3" ]; then
        echo "ok - $1"
        passes=$((passes + 1))
    else
        echo "not ok - $1"
        diff <(printf '%s\n' "$3") <(printf '%s\n' "$2") | sed 's/^/#   /' | head -20 || true
        failures=$((failures + 1))
    fi
}

# test_image NAME DOCKERFILE BUILD-ARGS...: build, run read-only, check the page, a publish and a stream.
test_image() {
    local name=$1 dockerfile=$2
    shift 2
    local tag="localhost/ngx-http-sse:$name"
    step "build $tag from $dockerfile"
    local t0=$SECONDS
    pm build "${limits[@]}" -f "$dockerfile" "$@" -t "$tag" . >"$work/build-$name.log" 2>&1 ||
        { tail -40 "$work/build-$name.log"; exit 1; }
    echo "# built $tag in $((SECONDS - t0)) s: $(pm image inspect --format '{{.Size}}' "$tag" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
    check "$name: the runtime image has no compiler and no -dev package" \
        "$(pm run --rm "${limits[@]}" "$tag" sh -c 'ls /usr/bin/cc /usr/bin/gcc /usr/bin/g++ /usr/bin/c++ 2>/dev/null; dpkg -l "*-dev" 2>/dev/null | grep ^ii; echo looked')" looked

    local port c
    port=$(free_port)
    step "run $tag read-only on 127.0.0.1:$port"
    c=$(pm run -d --read-only --tmpfs /tmp "${limits[@]}" -p "127.0.0.1:$port:8080" "$tag")
    containers+=("$c")
    local up=0
    for _ in $(seq 100); do
        curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && { up=1; break; }
        sleep 0.1
    done
    check "$name: it serves on the published port" "$up" 1
    check "$name: the demo page" "$(curl -sS "http://127.0.0.1:$port/" | md5sum)" "$(md5sum <conf/html/index.html)"

    local stream="$work/stream-$name" reply id
    curl -sN --max-time 5 "http://127.0.0.1:$port/events?topics=demo" >"$stream" &
    local curl_pid=$!
    for _ in $(seq 50); do [ -s "$stream" ] && break; sleep 0.1; done
    reply=$(curl -sS -d '{"from":"the host"}' "http://127.0.0.1:$port/internal/publish?topic=demo&event=hello")
    id=$(sed -n 's/^{"id":"\([0-9]*\)".*/\1/p' <<<"$reply")
    check "$name: a publish from the host reaches the stream" "$reply" "{\"id\":\"$id\",\"events\":1,\"subscribers\":1}"
    wait "$curl_pid" || true
    check "$name: the stream's exact bytes" "$(cat "$stream"; echo .)" \
        "$(printf ':ok\nretry: 3000\n\nid: %s\nevent: hello\ndata: {"from":"the host"}\n\n.' "$id")"

    # Requests on stdout, errors on stderr.
    local publisher
    publisher=$(pm logs "$c" 2>/dev/null | awk '/"POST \/internal\/publish/ { print $1 }')
    check "$name: the access log is on stdout" "$(wc -w <<<"$publisher")" 1
    echo "# the publish came from $publisher (the container network's side of the published port)"
    check "$name: the error log is on stderr" "$(pm logs "$c" 2>&1 >/dev/null | grep -c 'start worker process [0-9]')" 2
    check "$name: no alert, emerg or crit" "$(pm logs "$c" 2>&1 | grep -E '\[(alert|emerg|crit)\]' || true)" ""
    step "stop $tag (its STOPSIGNAL, SIGQUIT)"
    curl -sN --max-time 20 "http://127.0.0.1:$port/events?topics=demo" >"$stream" &
    curl_pid=$!
    for _ in $(seq 50); do [ -s "$stream" ] && break; sleep 0.1; done
    pm stop -t 20 "$c" >/dev/null
    local ended=0
    wait "$curl_pid" && ended=1
    check "$name: an open stream ends cleanly when it stops" "$ended" 1
    check "$name: it stopped with exit code 0" "$(pm inspect --format '{{.State.ExitCode}}' "$c")" 0
    check "$name: gracefully, each worker" "$(pm logs "$c" 2>&1 | grep -c 'gracefully shutting down')" 2
}

step "base images"
make_debian_base
if [ "$which" = all ] || [ "$which" = debian ]; then
    test_image debian Dockerfile
fi
if [ "$which" = all ] || [ "$which" = nginx ]; then
    make_nginx_base
    # Dockerfile.nginx downloads the nginx source unless the context has it in dist/ (no network here).
    if [ ! -f "dist/nginx-$nginx_version.tar.gz" ] && tarball=$(shared_tarball); then
        mkdir -p dist
        cp "$tarball" dist/
    fi
    test_image nginx Dockerfile.nginx --build-arg NGINX_IMAGE="docker.io/library/nginx:$nginx_version"
fi
pm images --filter reference=localhost/ngx-http-sse
echo "$passes passed, $failures failed"
[ "$failures" = 0 ]

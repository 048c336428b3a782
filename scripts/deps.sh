# Installs the Debian packages the scripts need, once. Sourced by the other scripts.
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "missing Debian packages: ${missing[*]} (run as root to install them)" >&2
        return 1
    fi
    echo "installing ${missing[*]}" >&2
    if [ -z "${SSE_APT_UPDATED:-}" ]; then
        apt-get update -qq >&2
        export SSE_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

ensure_build_deps() {
    apt_install nginx nginx-dev g++ make libhiredis-dev nlohmann-json3-dev \
        libpcre2-dev libssl-dev zlib1g-dev
}

ensure_test_deps() {
    ensure_build_deps
    apt_install libgtest-dev curl perl libio-socket-ssl-perl chromium python3-prometheus-client openssl redis-server redis-tools
    # Node.js ships with the machine image; Debian's packages are the fallback.
    command -v npm >/dev/null 2>&1 || apt_install nodejs npm
}

# libFuzzer comes with clang's runtime libraries; the targets read Redis's JSON with nlohmann.
ensure_fuzz_deps() {
    apt_install clang-14 libclang-rt-14-dev g++ nlohmann-json3-dev
}

# jq reads the results; gnuplot (without X) draws the plot of CPU per delivery.
ensure_bench_deps() {
    ensure_build_deps
    apt_install libnginx-mod-nchan jq gnuplot-nox
}

# The browser tests' npm packages (playwright-core, which drives Debian's chromium), as locked.
ensure_browser_test_packages() {
    local dir="$1"
    if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
    fi
}

# The nginx source releases in ../shared/nginx: beside the repository, or beside its main
# checkout when this is a git worktree. Prints the directories that exist, nearest first.
shared_nginx_dirs() {
    local repo dirs common d
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    dirs=("$repo/../shared/nginx")
    common=$(git -C "$repo" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)
    [ -n "$common" ] && dirs+=("$(dirname "$common")/../shared/nginx")
    for d in "${dirs[@]}"; do
        [ -d "$d" ] && realpath "$d"
    done
    return 0
}

# The path of nginx-<version>.tar.gz in ../shared/nginx, or a loud failure.
shared_nginx_tarball() {
    local version="$1" dirs d
    mapfile -t dirs < <(shared_nginx_dirs)
    for d in "${dirs[@]}"; do
        [ -f "$d/nginx-$version.tar.gz" ] && { echo "$d/nginx-$version.tar.gz"; return 0; }
    done
    echo "nginx-$version.tar.gz not found in ../shared/nginx (beside the repository or its main checkout;" \
        "CI copies shared/ there)" >&2
    return 1
}

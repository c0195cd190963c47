#!/usr/bin/env bash
# Installs what `make bench` needs and is missing: nginx, HAProxy, wrk and h2load
# (Debian's nghttp2-client: the HTTP/2 and gRPC load generator of the http2 scenario), from the
# distribution's packages (Debian/Ubuntu: apt-get install -y --no-install-recommends),
# and taskset (util-linux, normally always there). It says exactly which packages it
# installs, and installs nothing when everything is present.
#
#   bash bench/install.sh            # install what is missing
#   bash bench/install.sh --dry-run  # only say what would be installed
#
# Note: Debian starts the nginx and haproxy system services when it installs their
# packages (nginx on port 80). The benchmark does not use them: it starts its own
# instances on free loopback ports. `systemctl disable --now nginx haproxy` stops them.
set -euo pipefail

dry_run=0
case "${1:-}" in
  --dry-run) dry_run=1 ;;
  "") ;;
  *) echo "usage: bash bench/install.sh [--dry-run]" >&2; exit 2 ;;
esac

# nginx and haproxy live in /usr/sbin, often not on a normal user's PATH.
search_path="${PATH}:/usr/sbin:/sbin"

# command → the Debian package that provides it
tools=(nginx haproxy wrk h2load taskset)
declare -A package_of=([nginx]=nginx [haproxy]=haproxy [wrk]=wrk [h2load]=nghttp2-client [taskset]=util-linux)

missing_packages=()
for tool in "${tools[@]}"; do
  if PATH="$search_path" command -v "$tool" >/dev/null 2>&1; then
    echo "bench/install.sh: $tool: found ($(PATH="$search_path" command -v "$tool"))"
  else
    echo "bench/install.sh: $tool: missing (Debian package ${package_of[$tool]})"
    missing_packages+=("${package_of[$tool]}")
  fi
done

if [ "${#missing_packages[@]}" -eq 0 ]; then
  echo "bench/install.sh: nothing to install"
  exit 0
fi

echo "bench/install.sh: packages to install: ${missing_packages[*]}"
if [ "$dry_run" -eq 1 ]; then
  echo "bench/install.sh: --dry-run: not installing"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "bench/install.sh: no apt-get here; install these yourself: ${missing_packages[*]}" >&2
  exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "bench/install.sh: installing needs root (or sudo); install: ${missing_packages[*]}" >&2
    exit 1
  fi
fi

# Without package lists (a fresh container), apt-get cannot find the packages.
for package in "${missing_packages[@]}"; do
  if ! apt-cache show "$package" >/dev/null 2>&1; then
    echo "bench/install.sh: running apt-get update (no package list has $package)"
    "${sudo[@]}" apt-get update
    break
  fi
done

echo "bench/install.sh: apt-get install -y --no-install-recommends ${missing_packages[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing_packages[@]}"
echo "bench/install.sh: installed ${missing_packages[*]}"

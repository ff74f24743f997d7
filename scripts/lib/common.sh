# Shared by scripts/demo and scripts/test: package installation and logging.
# shellcheck shell=bash

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs the Debian packages that provide the given commands, running
# `apt-get update` at most once per script. Usage: need cmd:package ...
_apt_updated=0
need() {
  local missing=()
  for spec in "$@"; do
    local cmd=${spec%%:*} pkg=${spec#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "need root to install: ${missing[*]}"
  if [ "$_apt_updated" = 0 ]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
    _apt_updated=1
  fi
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

# The host facts lockstep depends on, checked up front with advice.
check_host() {
  [ "$(id -u)" = 0 ] || die "run as root (KVM, taps and network namespaces need it)"
  [ -e /dev/kvm ] || die "/dev/kvm is missing: this host has no KVM"
  [ -e /dev/net/tun ] || die "/dev/net/tun is missing: load the tun module"
  command -v cargo >/dev/null || die "cargo is missing: install Rust (rustup)"
}

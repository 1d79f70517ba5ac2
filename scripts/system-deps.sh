#!/usr/bin/env bash
# System (Debian) packages the Studio needs, installed when we may, else one command to run.
#
#   Both: python3-venv when python3 cannot make a venv yet.
#   scripts/system-deps.sh run    libusb-1.0-0 (open3d's native dependency; optional: the plane
#                                 baselines say why they are off without it). Never a browser.
#                                 Missing and not installable -> a warning, the Studio still starts.
#   scripts/system-deps.sh test   + chromium (browser tests, viewer bench), caddy (reverse-proxy
#                                 TLS test), postgresql and redis-server (scale-out tests start
#                                 throwaway servers on loopback; the system services are not used).
#                                 Missing and not installable -> stop with the command.
#
# Installs when running as root or with passwordless sudo, on a machine with apt-get.
# STUDIO_SYSTEM_DEPS=skip skips the whole check (e.g. a non-Debian box set up by hand).
set -euo pipefail
target="${1:-test}"
[ "${STUDIO_SYSTEM_DEPS:-}" = "skip" ] && exit 0

have_pkg() {  # package installed (dpkg), or what it provides is present (non-dpkg systems)
  if command -v dpkg-query >/dev/null 2>&1; then
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" && return 0
  fi
  case "$1" in
    chromium) [ -x /usr/bin/chromium ] ;;
    caddy) command -v caddy >/dev/null 2>&1 ;;
    python3-venv) python3 -c "import ensurepip" 2>/dev/null ;;
    libusb-1.0-0) ldconfig -p 2>/dev/null | grep -q 'libusb-1\.0\.so' ;;
    postgresql) ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 ;;
    redis-server) command -v redis-server >/dev/null 2>&1 ;;
    *) return 1 ;;
  esac
}

pkgs=(libusb-1.0-0)
# Debian's python3 makes venvs only with python3-venv (ensurepip); needed unless .venv exists
[ -x "${VENV:-.venv}/bin/python" ] || python3 -c "import ensurepip" 2>/dev/null || pkgs+=(python3-venv)
[ "$target" = "test" ] && pkgs+=(chromium caddy postgresql redis-server)
need=()
for p in "${pkgs[@]}"; do have_pkg "$p" || need+=("$p"); done
[ ${#need[@]} -eq 0 ] && exit 0

sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo_cmd="sudo -n"; else sudo_cmd="none"; fi
fi
if [ "$sudo_cmd" != "none" ] && command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: installing ${need[*]} (apt-get)" >&2
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  still=()
  for p in "${need[@]}"; do have_pkg "$p" || still+=("$p"); done
  [ ${#still[@]} -eq 0 ] && exit 0
  need=("${still[@]}")
  echo "system-deps: apt-get ran but ${need[*]} is still missing" >&2
fi

cmd="sudo apt-get install -y ${need[*]}"
if [ "$target" = "test" ]; then
  echo "" >&2
  echo "make test needs Debian packages that are not installed and cannot be installed from here" >&2
  echo "(not root, no passwordless sudo). Run this once, then make test again:" >&2
  echo "" >&2
  echo "    $cmd" >&2
  echo "" >&2
  exit 1
fi
echo "system-deps: warning: ${need[*]} missing; the open3d plane baselines stay off until you run: $cmd" >&2
exit 0

#!/usr/bin/env bash
# Make a headless Chromium available for the browser test of `segbench serve`
# (tests/test_serve.py drives it with Playwright through executable_path; Playwright's own
# browser download is not used). Prints the browser's path on its last line of stdout.
#
#   scripts/install_browser.sh          install Debian's chromium-headless-shell if no chromium is found
#
# Exit codes: 0 found or installed; 3 none found and this user cannot install one (not root, or no
# apt-get): the test then skips, printing the reason.
set -euo pipefail

find_browser() {
  local c
  for c in "${SEGBENCH_CHROMIUM:-}" chromium-headless-shell chromium chromium-browser google-chrome; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1; then command -v "$c"; return 0; fi
  done
  # Debian installs the headless shell's binary outside PATH on some releases
  for c in /usr/lib/chromium/chromium-headless-shell /usr/lib/chromium/headless_shell; do
    if [ -x "$c" ]; then echo "$c"; return 0; fi
  done
  return 1
}

if path=$(find_browser); then echo "$path"; exit 0; fi

if [ "$(id -u)" != 0 ]; then
  echo "no chromium found and not root: install Debian's chromium-headless-shell (apt-get install chromium-headless-shell) or set SEGBENCH_CHROMIUM" >&2
  exit 3
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no chromium found and no apt-get on this machine: install a Chromium and set SEGBENCH_CHROMIUM to its path" >&2
  exit 3
fi

echo "installing chromium-headless-shell with apt-get (once per machine) ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2 || true
apt-get install -y -qq --no-install-recommends chromium-headless-shell fonts-dejavu-core >&2 \
  || { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends chromium-headless-shell fonts-dejavu-core >&2; }
path=$(find_browser) || { echo "chromium-headless-shell was installed but no binary was found" >&2; exit 1; }
echo "$path"

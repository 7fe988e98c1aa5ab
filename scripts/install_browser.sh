#!/usr/bin/env bash
# Install the browser the app's browser tests drive (tests/app, marker `browser`): Debian's
# chromium at /usr/bin/chromium, used by Python playwright through executable_path (no
# playwright browser download), and axe-core from the npm registry for the accessibility check
# (into $DLR_HF_AXE_DIR, default ~/.cache/dlr-hf/axe; needs npm). Skips what is already there.
set -euo pipefail
AXE_VERSION=4.14.1
AXE_DIR="${DLR_HF_AXE_DIR:-$HOME/.cache/dlr-hf/axe}"
if [ ! -f "$AXE_DIR/node_modules/axe-core/axe.min.js" ]; then
  if command -v npm >/dev/null 2>&1; then
    mkdir -p "$AXE_DIR"
    npm install --no-save --no-audit --no-fund --prefix "$AXE_DIR" "axe-core@$AXE_VERSION" >/dev/null
    echo "axe-core $AXE_VERSION installed in $AXE_DIR"
  else
    echo "install_browser.sh: npm not found; the accessibility test will be skipped (apt-get install npm)" >&2
  fi
fi
if [ -x /usr/bin/chromium ]; then
  echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "install_browser.sh: not root and no sudo; install chromium yourself (apt-get install chromium)" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
/usr/bin/chromium --version

#!/bin/sh
# Installs Debian's chromium (and a font) for the browser test,
# gateway/browser_test.go. Idempotent; needs root. Called from .ci/run, and
# by the test itself when CI=true, running as root, and chromium is missing.
set -eu
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "install-chromium.sh: needs root (or run: sudo apt-get install chromium)" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium

#!/usr/bin/env bash
# Debian packages the tests need beyond pip, installed only when missing.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)  # a certificate for the TLS test
command -v wrk >/dev/null 2>&1 || missing+=(wrk)  # the burst benchmark's load generator (bench/burst)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)  # bench/grpc's load generator

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing Debian packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"

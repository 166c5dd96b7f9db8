#!/usr/bin/env bash
# Installs everything the test suite needs, then runs the whole suite (extra arguments go to pytest).
# As root on Debian it also installs the independent client tools the interop tests drive: coturn's
# turnutils_* (its turnserver service is stopped and disabled: pyturn's tests never use it) and the
# classic `stun` client, apache2-utils' htdigest and nginx (its service stopped and disabled too), and what
# the deployment tests need. Python packages go into ./.venv unless a virtualenv is already active.
set -euo pipefail
cd "$(dirname "$0")/.."
apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    fi
}
if ! command -v turnutils_uclient >/dev/null || ! command -v stun >/dev/null; then
    apt_install coturn stun-client
fi
if ! command -v htdigest >/dev/null; then
    apt_install apache2-utils  # the real htdigest, for the `pyturn users` round trips and the deployment tests
fi
if ! command -v nginx >/dev/null; then
    apt_install nginx libnginx-mod-stream  # the README's ssl_preread snippet for sharing port 443 is run
fi
# The deployment tests (tests/deploy/) run pyturn in network namespaces (iproute2) and drive Debian's Chromium
# through playwright (the pip package; it never downloads a browser).
missing=()
command -v ip >/dev/null || missing+=(iproute2)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
fi
if [ "$(id -u)" = 0 ]; then
    (systemctl disable --now coturn || service coturn stop || true) >/dev/null 2>&1
    (systemctl disable --now nginx || service nginx stop || true) >/dev/null 2>&1  # the tests start their own
fi
# tests/ops/test_debian_package.py builds the .deb, runs lintian and installs it in a debootstrap'd chroot.
debian_tools="dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools python3-yaml
              lintian debootstrap groff-base"
missing=""
for package in $debian_tools; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing="$missing $package"
done
if [ -n "$missing" ]; then
    # shellcheck disable=SC2086  # one word per package
    apt_install $missing
fi
python=python3
if [ -z "${VIRTUAL_ENV:-}" ]; then
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv 2>/dev/null || { apt_install python3-venv; rm -rf .venv; python3 -m venv .venv; }
    fi
    python=.venv/bin/python
fi
"$python" -m pip install -q --disable-pip-version-check -e '.[test,dev]'
exec "$python" -m pytest -q "$@"

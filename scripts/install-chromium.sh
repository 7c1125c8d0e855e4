#!/bin/sh
# Chromium for the report's browser test (tests/test_report.py), installed only when missing
# (Debian/Ubuntu: apt-get, as root or with password-less sudo). Never fails the caller:
# without Chromium that test is skipped and says why.
for b in chromium chromium-browser google-chrome google-chrome-stable; do
    command -v "$b" >/dev/null 2>&1 && exit 0
done
if [ "$(id -u)" = 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "chromium missing and no root to install it: the report's browser test will be skipped"
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q chromium >/dev/null 2>&1 ||
        { $SUDO apt-get update -q >/dev/null 2>&1 &&
            $SUDO apt-get install -y -q chromium >/dev/null 2>&1; }
fi
if command -v chromium >/dev/null 2>&1; then
    echo "installed chromium (for the report's browser test)"
else
    echo "could not install chromium: the report's browser test will be skipped"
fi
exit 0

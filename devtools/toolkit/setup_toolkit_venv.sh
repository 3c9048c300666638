#!/usr/bin/env bash
# Build (or reuse) the separate virtual environment that runs code/ under the real
# SageMaker PyTorch inference toolkit (sagemaker-pytorch-inference 2.0.25 on TorchServe
# 0.12), natively, without Docker.
#
# Usage: devtools/toolkit/setup_toolkit_venv.sh [PROJECT_PYTHON]
#   PROJECT_PYTHON  the interpreter of the project's environment (default: python3 on
#                   PATH); the toolkit venv is made from the same base interpreter and
#                   borrows that environment's torch, torchvision, numpy, pillow and boto3
#                   (and their dependencies) through symlinks instead of a second
#                   multi-GB torch install.
#
# Where: $SMVISION_TOOLKIT_VENV, else ${XDG_CACHE_HOME:-$HOME/.cache}/smvision/toolkit-venv
# (outside the repository, so a fresh clone reuses it). Idempotent: a stamp file holds a
# hash of everything the venv was built from; when it matches and the toolkit imports,
# the script only prints the venv path (well under a second). Otherwise it rebuilds in
# place, under a lock, so two runs at once do not race.
#
# Why not just `pip install` the toolkit into the project venv: its pins (setuptools<81
# for pkg_resources, pyyaml, scipy, psutil, retrying, the vendored sagemaker_inference)
# would leak into the project's tested environment, and the project's own packages
# (efficientnet_pytorch, smvision itself) would hide what the AWS image lacks. This venv
# holds what the AWS PyTorch 2.6 inference image holds (torch, torchvision, numpy,
# pillow, boto3, scipy, the toolkit and TorchServe) plus every kind's code/requirements.txt
# (archive/requirements.py, the union of all kinds), which the toolkit pip-installs at
# every start, exactly as the image does: preinstalled, that install finds nothing to do.
#
# The last line printed on stdout is the venv's directory.
set -euo pipefail

PROJECT_PYTHON="${1:-${SMVISION_PROJECT_PYTHON:-python3}}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${SMVISION_TOOLKIT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/smvision/toolkit-venv}"

# What the toolkit needs natively (the AWS image has these, or their equivalents).
TOOLKIT_PINS=(
  "sagemaker-pytorch-inference==2.0.25"
  "torchserve==0.12.0"
  "setuptools==80.10.2"      # <81: torchserve.py imports pkg_resources
  "pyyaml==6.0.3"            # torchserve imports yaml without declaring it
  "scipy==1.17.1"
  "psutil==7.2.2"
  "retrying==1.4.2"
  "six==1.17.0"
  "packaging==26.3"
  "wheel==0.48.0"
)
# Distributions borrowed from the project environment (with their dependency closure).
BORROW=(torch torchvision numpy pillow boto3)

log() { echo "[setup_toolkit_venv] $*" >&2; }

PROJECT_PYTHON="$(command -v "$PROJECT_PYTHON")"
KEY="$(
  {
    cat "$0"
    cat "$REPO/archive/requirements.py"
    "$PROJECT_PYTHON" - "${BORROW[@]}" <<'PY'
import sys, sysconfig, importlib.metadata as md
print(sys.version, sys.base_prefix, sysconfig.get_paths()["purelib"])
for name in sys.argv[1:]:
    print(name, md.version(name))
PY
  } | sha256sum | cut -c1-32
)"

ready() {
  [ -f "$VENV/.smvision-stamp" ] && [ "$(cat "$VENV/.smvision-stamp")" = "$KEY" ] &&
    [ -x "$VENV/bin/torchserve" ] && [ -x "$VENV/bin/serve" ] &&
    [ -e "$VENV/borrowed-site-packages/torch/__init__.py" ] &&
    "$VENV/bin/python" -c "" >/dev/null 2>&1
}

if ready; then
  echo "$VENV"
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock -w 1800 9
if ready; then  # built by another run while we waited
  echo "$VENV"
  exit 0
fi

START=$(date +%s)
log "building $VENV (key $KEY)"
rm -rf "$VENV"
"$PROJECT_PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
SHARED="$VENV/borrowed-site-packages"
mkdir -p "$SHARED"

# Symlink every top-level entry (package dirs, modules, .dist-info, .libs) of the
# borrowed distributions' closure into one folder that a .pth file appends to sys.path.
# pip then sees them as installed and never downloads torch again.
"$PROJECT_PYTHON" - "$SHARED" "${BORROW[@]}" <<'PY'
import os, re, sys, importlib.metadata as md
try:
    from packaging.requirements import Requirement
except ImportError:  # an environment without packaging still has pip's copy
    from pip._vendor.packaging.requirements import Requirement

shared, roots = sys.argv[1], sys.argv[2:]
# Installed in the toolkit venv itself (pinned above), never borrowed.
own = {"pip", "setuptools", "wheel", "packaging", "psutil", "pyyaml", "six", "scipy"}
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
seen, done, todo = {}, set(), [(r, "") for r in roots]
while todo:
    name, extra = todo.pop()
    name = norm(name)
    if (name, extra) in done or name in own:
        continue
    done.add((name, extra))
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        continue
    seen[name] = dist
    for spec in dist.requires or []:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate({"extra": extra}):
            todo += [(req.name, "")] + [(req.name, e) for e in req.extras]
linked = set()
for name, dist in sorted(seen.items()):
    base = str(dist.locate_file(""))
    tops = {str(f).split("/")[0] for f in dist.files or [] if not str(f).startswith("..")}
    for top in sorted(tops):
        src, dst = os.path.join(base, top), os.path.join(shared, top)
        if top in linked or top == "__pycache__" or not os.path.exists(src):
            continue
        os.symlink(src, dst)
        linked.add(top)
print(f"borrowed {len(seen)} distributions: {', '.join(sorted(seen))}", file=sys.stderr)
PY
echo "$SHARED" > "$SITE/zz_smvision_borrowed.pth"

export PIP_DISABLE_PIP_VERSION_CHECK=1
"$PY" -m pip install --quiet "${TOOLKIT_PINS[@]}"
# Every kind's code/requirements.txt, as archive/requirements.py writes them (run without
# importing smvision: the file is self-contained).
KIND_REQUIREMENTS="$VENV/kind-requirements.txt"
"$PROJECT_PYTHON" "$REPO/archive/requirements.py" > "$KIND_REQUIREMENTS"
"$PY" -m pip install --quiet -r "$KIND_REQUIREMENTS"
"$PY" -c "import sagemaker_pytorch_serving_container.serving, ts, torch, yaml, pkg_resources" \
  2>/dev/null
echo "$KEY" > "$VENV/.smvision-stamp"
log "built in $(( $(date +%s) - START )) s"
echo "$VENV"

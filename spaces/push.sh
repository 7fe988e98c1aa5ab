#!/usr/bin/env bash
# Push the D_LR app to a Hugging Face Space (sdk: gradio), from the repository root:
#
#   bash spaces/push.sh ORG/SPACE_NAME          # stage, create the Space if needed, upload
#   bash spaces/push.sh --stage-only DIR        # only assemble the Space folder in DIR
#
# The Space folder: app.py, the dlr_hf package, spaces/README.md as README.md (the YAML card),
# spaces/requirements.txt as requirements.txt. Needs `hf auth login` (a write token) to upload.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,8p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage

stage_only=false
if [ "$1" = "--stage-only" ]; then
  [ $# -eq 2 ] || usage
  stage_only=true
  stage="$2"
  mkdir -p "$stage"
else
  [ $# -eq 1 ] || usage
  space="$1"
  stage="$(mktemp -d)"
  trap 'rm -rf "$stage"' EXIT
fi

cp app.py "$stage/app.py"
cp spaces/README.md "$stage/README.md"
cp spaces/requirements.txt "$stage/requirements.txt"
rm -rf "$stage/dlr_hf"
mkdir -p "$stage/dlr_hf"
(cd dlr_hf && find . -name '*.py' -not -path '*/__pycache__/*' -print0 | while IFS= read -r -d '' file; do
  mkdir -p "$stage/dlr_hf/$(dirname "$file")"
  cp "$file" "$stage/dlr_hf/$file"
done)

if $stage_only; then
  echo "Space folder assembled in $stage"
  exit 0
fi

hf repos create "$space" --type space --sdk gradio --exist-ok
hf upload "$space" "$stage" . --repo-type space --commit-message "Deploy the D_LR app"
echo "Pushed: https://huggingface.co/spaces/$space"

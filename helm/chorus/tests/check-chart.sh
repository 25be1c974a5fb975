#!/usr/bin/env bash
# Lints the chart and renders it with the default values and with each values file under ci/,
# validating every rendered object (strictly: unknown fields are errors) against the schemas of
# two Kubernetes versions: the oldest the chart supports and a current one. A control render
# with an unknown field must be refused, so the validation is known to bite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PATH="$(tests/tools.sh):$PATH"
versions=(1.30.0 1.35.0)
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

helm version --short
helm lint --strict . >/dev/null
for values in '' ci/*-values.yaml; do
  name="${values:-default}"
  helm lint --strict ${values:+-f "$values"} . >/dev/null
  helm template chorus . --namespace chorus ${values:+-f "$values"} > "$out/rendered.yaml"
  for version in "${versions[@]}"; do
    kubernetes-validate --strict --quiet --no-warn -k "$version" "$out/rendered.yaml"
  done
  echo "ok: $name: lint, template, kubernetes-validate --strict (${versions[*]})"
done

sed 's/^\(      enableServiceLinks: false\)$/\1\n      notAField: true/' "$out/rendered.yaml" > "$out/broken.yaml"
grep -q notAField "$out/broken.yaml"
if kubernetes-validate --strict --quiet --no-warn -k "${versions[0]}" "$out/broken.yaml" >/dev/null 2>&1; then
  echo "kubernetes-validate accepted an unknown field: the checks above prove nothing" >&2
  exit 1
fi
echo "ok: an unknown field is refused"

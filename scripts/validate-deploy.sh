#!/usr/bin/env bash
# Validate the deployment files with what these machines have (no Docker engine, no
# cluster): docker-compose.yml against the Compose specification's JSON schema (shipped in
# the docker-compose 1.29 wheel, used here only for its schema), deploy/k8s against the
# Kubernetes OpenAPI schemas (kubernetes-validate, strict), and the Prometheus and Grafana
# files for syntax. `docker compose config` runs too where the Compose plugin exists.
# Tools are cached in $THREATPIPE_CACHE/validate (default ~/.cache/threatpipe/validate).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${THREATPIPE_CACHE:-$HOME/.cache/threatpipe}/validate"
mkdir -p "$CACHE"
log() { echo "[validate] $*" >&2; }

if ! python3 -c "import kubernetes_validate, jsonschema, yaml" 2>/dev/null; then
  log "installing kubernetes-validate, jsonschema, pyyaml (PyPI)"
  python3 -m pip install -q --disable-pip-version-check kubernetes-validate jsonschema pyyaml >&2
fi
if [ ! -f "$CACHE/compose_spec.json" ]; then
  log "fetching the Compose specification schema (docker-compose 1.29.2 wheel)"
  python3 -m pip download -q --disable-pip-version-check --no-deps docker-compose==1.29.2 -d "$CACHE" >&2
  python3 - "$CACHE" <<'PY'
import sys, zipfile, glob
cache = sys.argv[1]
wheel = glob.glob(f"{cache}/docker_compose-1.29.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    open(f"{cache}/compose_spec.json", "wb").write(z.read("compose/config/compose_spec.json"))
PY
fi

python3 - "$CACHE/compose_spec.json" <<'PY'
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
compose = yaml.safe_load(open("docker-compose.yml"))
jsonschema.validate(compose, schema)
services = compose["services"]
for name, s in services.items():
    assert "image" in s or "build" in s, f"{name}: no image or build"
    for dep in (s.get("depends_on") or {}):
        assert dep in services, f"{name} depends on unknown service {dep}"
roles = ["normalize", "quick-scan", "correlate", "ml-score", "alert", "sink"]
for role in roles:
    assert services[role].get("deploy", {}).get("replicas", 1) >= 2, f"{role}: fewer than two instances"
    assert "healthcheck" in services[role], f"{role}: no health check"
print(f"[validate] docker-compose.yml: valid against the Compose spec; {len(services)} services, two instances of each role", file=sys.stderr)
for f in ["deploy/prometheus/prometheus.yml", "deploy/prometheus/alerts.yml", "deploy/grafana/provisioning/datasources/prometheus.yml", "deploy/grafana/provisioning/dashboards/threatpipe.yml"]:
    yaml.safe_load(open(f))
json.load(open("deploy/grafana/dashboards/threatpipe.json"))
print("[validate] Prometheus and Grafana files parse", file=sys.stderr)
PY

if docker compose version >/dev/null 2>&1; then
  docker compose config -q && log "docker compose config: ok"
fi
python3 -m kubernetes_validate --strict deploy/k8s/threatpipe.yaml >&2
log "deploy/k8s: valid (strict) against Kubernetes $(python3 -c 'import kubernetes_validate.utils as u; print(u.latest_version())' 2>/dev/null || echo latest)"

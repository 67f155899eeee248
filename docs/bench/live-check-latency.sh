#!/bin/bash
# Added latency of the EC2 live check: server-side duration_ms of logins with the check off,
# cold (cache miss: batch window + DescribeInstances on moto) and warm (kept answer).
set -euo pipefail
B=/var/tmp/agent-auth-target/release/agent-auth
V=/var/tmp/agent-auth-venv
W=/tmp/live/work; rm -rf $W; mkdir -p $W; chown postgres $W
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
su postgres -c "$PGBIN/initdb -A trust -U postgres -D $W/pg >/dev/null"
su postgres -c "$PGBIN/pg_ctl -D $W/pg -o '-p 55432 -k $W -c listen_addresses=127.0.0.1 -c fsync=off' -l $W/pg.log start >/dev/null"
URL="postgresql://postgres@127.0.0.1:55432/postgres"
$V/bin/moto_server -H 127.0.0.1 -p 55555 >/dev/null 2>&1 & MOTO=$!
trap "kill $MOTO; su postgres -c '$PGBIN/pg_ctl -D $W/pg stop -m fast' >/dev/null" EXIT
sleep 3
export AWS_EC2_METADATA_DISABLED=true AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
read ID LAUNCH < <($V/bin/python - <<'PY'
import boto3
c = boto3.client("ec2", endpoint_url="http://127.0.0.1:55555", region_name="us-east-1")
i = c.run_instances(ImageId="ami-12c6146b", MinCount=5, MaxCount=5)["Instances"]
print(" ".join(x["InstanceId"] for x in i), i[0]["LaunchTime"].strftime("%Y-%m-%dT%H:%M:%SZ"))
PY
)
IDS=($ID $LAUNCH); LAUNCH=${IDS[-1]}; unset 'IDS[-1]'
$B migrate --postgres-url "$URL" >/dev/null 2>&1
openssl req -x509 -newkey rsa:1024 -nodes -keyout $W/key.pem -out $W/cert.pem -days 2 -subj /CN=ec2 2>/dev/null
n=0
for id in "${IDS[@]}"; do
  n=$((n+1))
  psql -q "$URL" -c "INSERT INTO workspaces (id) VALUES (md5('w$n')::uuid); INSERT INTO provisioner_jobs (id, type) VALUES (md5('j$n')::uuid, 'workspace_build'); INSERT INTO workspace_builds (workspace_id, build_number, job_id) VALUES (md5('w$n')::uuid, 1, md5('j$n')::uuid); INSERT INTO workspace_resources (id, job_id) VALUES (md5('r$n')::uuid, md5('j$n')::uuid); INSERT INTO workspace_agents (name, resource_id, auth_instance_id) VALUES ('main', md5('r$n')::uuid, '$id');"
  printf '{\n  "accountId" : "123456789012",\n  "instanceId" : "%s",\n  "pendingTime" : "%s",\n  "region" : "us-east-1",\n  "version" : "2017-09-30"\n}' "$id" "$LAUNCH" > $W/doc-$n.json
  openssl dgst -sha256 -sign $W/key.pem $W/doc-$n.json | base64 -w0 > $W/sig-$n.txt
done
serve() {
  $B serve --postgres-url "$URL" --grpc-listen 127.0.0.1:55051 --admin-listen 127.0.0.1:55090 \
    --aws-certificate us-east-1=$W/cert.pem --gcp-jwks /work/main/tests/fixtures/gcp/empty-jwks.json "$@" 2> $W/serve.log &
  SERVE=$!; sleep 2
}
login() { $B authenticate --server http://127.0.0.1:55051 --aws-document $W/doc-$1.json --aws-signature $W/sig-$1.txt >/dev/null; }
durations() { grep '"authentication"' $W/serve.log | grep -o '"duration_ms":[0-9.]*' | cut -d: -f2 | tr '\n' ' '; echo; }
serve
for n in 1 2 3 4 5; do login $n; login $n; done
echo "check off (10 logins):        $(durations)"
kill $SERVE; wait $SERVE 2>/dev/null || true
serve --aws-ec2-check true --aws-ec2-endpoint http://127.0.0.1:55555
for n in 1 2 3 4 5; do login $n; login $n; login $n; done
echo "check on (per instance: cold, warm, warm): $(durations)"
kill $SERVE; wait $SERVE 2>/dev/null || true

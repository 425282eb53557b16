#!/usr/bin/env bash
# Two hospitals and a privacy guardian: hospital A labels its unlabelled records with CaPC,
# helped by hospital B's model, without either seeing the other's data or model. Each party
# is a directory (its machine) and a loopback address; Mosquitto with TLS and an ACL is the
# broker. Usage: bash examples/two_hospitals.sh DIR   (confidant and mosquitto on PATH)
set -euo pipefail
mkdir -p "$1" && cd "$1"
PORT=${PORT:-8883}
PARTIES="hospital-a hospital-b guardian dealer"

# 0. Example files. A real hospital brings its own CSV, NPZ or Parquet files and a
#    study.json saying what every party's records look like (docs/data.md).
confidant split-data --dataset breast_cancer --parties hospital-a,hospital-b \
    --queries 60 --querier hospital-a --out example-data

# 1. Every machine makes its keys and hands its public card to the coordinator.
for party in hospital-a:qp hospital-b:ap guardian:pg dealer:dealer; do
    name=${party%%:*}
    mkdir -p "$name"
    confidant keygen --name "$name" --role "${party##*:}" --out "$name/$name.key" > "$name.card"
done

# 2. The coordinator writes deployment.toml from the cards, then the broker's config
#    (a CA, certificates, passwords, ACL); everyone compares the fingerprint it prints.
{
    printf '[deployment]\nname = "two-hospitals"\nbroker_url = "mqtts://127.0.0.1:%s"\n' "$PORT"
    printf '[deployment.tls]\nca = "ca.crt"\n\n'
    for card in *.card; do sed -n '/^\[\[party\]\]/,$p' "$card"; done
} > deployment.toml
confidant broker-config deployment.toml --out broker --bind 127.0.0.1 > broker-config.txt
FINGERPRINT=$(sed -n 's/^deployment fingerprint: \([0-9a-f]*\).*/\1/p' broker-config.txt)

# 3. The broker machine runs Mosquitto.
mosquitto -c broker/mosquitto.conf > broker/mosquitto.log 2>&1 &
BROKER=$!
trap 'kill $BROKER' EXIT
sleep 1

# 4. Each machine receives deployment.toml, ca.crt and its TLS certificate; the hospitals
#    keep their own files. The study parameters are public: everyone runs with the same.
for name in $PARTIES; do
    cp deployment.toml ca.crt "broker/tls/clients/$name.crt" "$name/"
    cp "broker/tls/clients/$name.key" "$name/$name.tls.key"
done
cp example-data/hospital-a.csv example-data/hospital-a-queries.csv hospital-a/
cp example-data/hospital-b.csv hospital-b/
PARAMS="{\"queries\": 60, \"batch_size\": 30, \"epochs\": 30, \"epsilon_budget\": 2000,
         \"data\": $(cat example-data/study.json)}"

# 5. Every party starts on its machine (here: its own loopback address), same new session.
SESSION=$(date +%s)
PIDS=""
start() {  # NAME ADDRESS [its own files and options]
    (cd "$1" && confidant party --deployment deployment.toml --name "$1" --key "$1.key" \
        --tls-cert "$1.crt" --tls-key "$1.tls.key" --bind-address "$2" --protocol capc \
        --session "$SESSION" --params "$PARAMS" "${@:3}" > party.log 2>&1) &
    PIDS="$PIDS $!"
}
start hospital-a 127.0.0.2 --data hospital-a.csv --queries hospital-a-queries.csv
start hospital-b 127.0.0.3 --data hospital-b.csv
start guardian 127.0.0.4 --ledger guardian-ledger.jsonl
start dealer 127.0.0.5
for pid in $PIDS; do wait "$pid"; done

# 6. The transcripts are gathered and audited against the agreed fingerprint.
mkdir -p audit/transcripts
cp deployment.toml audit/
for name in $PARTIES; do cp "$name/transcripts/$name.jsonl" audit/transcripts/; done
confidant audit audit --fingerprint "$FINGERPRINT" --ledger guardian=guardian/guardian-ledger.jsonl

# 7. What hospital A learned: a label per query (or why not), and its retrained model.
head -4 hospital-a/outputs/hospital-a/labels.csv
ls hospital-a/outputs/hospital-a/

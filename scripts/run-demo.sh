#!/usr/bin/env bash
# The bundled demo on a fresh Debian machine: dependencies, build, convert the bundled
# MovieLens SASRec checkpoint, import the bundled ratings into an LMDB history store, and
# serve the HTTP API on 127.0.0.1:8080 (Ctrl-C stops it). PORT=... picks another port.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-8080}
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target seqrec

example=examples/movielens
checkpoint=$(ls "$example"/SASRec.*.pth | head -n 1)
mkdir -p build/demo
build/seqrec convert --from pmixer "$checkpoint" --item-ids "$example/item_ids.txt" \
  --rating-threshold 3.5 --out build/demo/movielens.seqrec
build/seqrec inspect build/demo/movielens.seqrec
# A fresh store each run: importing appends, so re-importing would double every history.
rm -rf build/demo/history
build/seqrec import --history lmdb:build/demo/history --interactions "$example/ratings.csv"

cat <<CURL

Ready-to-paste requests (MovieLens movieIds; user ids 1..610 are in the imported store):

  curl -s localhost:$port/recommend -H 'Content-Type: application/json' \\
    -d '$(tr -d '\n' < "$example/request.json" | tr -s ' ')'

  curl -s localhost:$port/recommend -H 'Content-Type: application/json' -d '{"user_id": "1", "k": 5}'

  curl -s localhost:$port/recommend -H 'Content-Type: application/json' \
    -d '{"user_id": "1", "k": 5, "filter": {"tags_any": ["Comedy"]}, "fields": ["title", "tags"]}'

  curl -s localhost:$port/similar_items -H 'Content-Type: application/json' -d '{"item_id": 260, "k": 5, "fields": ["title"]}'

The web console: http://127.0.0.1:$port/

CURL
exec build/seqrec serve --model build/demo/movielens.seqrec --history lmdb:build/demo/history \
  --items "$example/movies.csv" --port "$port"

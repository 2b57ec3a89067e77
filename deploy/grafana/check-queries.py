#!/usr/bin/env python3
"""Runs every query of a Grafana dashboard against a live Prometheus and
prints, for each, whether Prometheus accepted it and how many series came
back; exits 1 if any query is refused. The dashboard's `$definition`
variable is replaced by `.*` (its "All").

usage: deploy/grafana/check-queries.py deploy/grafana/dashboards/sagas.json http://127.0.0.1:9090

With the native runner: `cargo run --release -p cluster`, a Prometheus
(Debian's `prometheus` package) scraping 127.0.0.1:8080-8083 with
deploy/prometheus/prometheus.yml's jobs, a few trips, then this.
"""
import json, sys, urllib.error, urllib.parse, urllib.request
d = json.load(open(sys.argv[1]))
base = sys.argv[2]
bad = 0
queries = [('variable', d['templating']['list'][0]['query']['query'])]
for p in d['panels']:
    for t in p.get('targets', []):
        queries.append((p['title'], t['expr']))
for title, expr in queries:
    e = expr.replace('$definition', '.*')
    if e.startswith('label_values('):
        metric, label = e[len('label_values('):-1].split(', ')
        url = f"{base}/api/v1/label/{label}/values?" + urllib.parse.urlencode({'match[]': metric})
    else:
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode({'query': e})
    try:
        r = json.load(urllib.request.urlopen(url))
    except urllib.error.HTTPError as err:
        r = json.load(err)
    data = r.get('data')
    n = len(data if isinstance(data, list) else data.get('result', [])) if data is not None else 0
    ok = r['status'] == 'success'
    bad += not ok
    print(f"{'ok ' if ok else 'ERR'} {n:3} series  {title}: {expr}  {r.get('error', '')}")
print('errors:', bad)
sys.exit(1 if bad else 0)

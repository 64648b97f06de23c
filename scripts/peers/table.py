"""Builds the comparison table (Markdown) from one bench-peers results folder."""
import json
import os
import sys

out = sys.argv[1]


def load(name):
    path = os.path.join(out, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def best(scenario, server):
    """The JSON of the highest clean step of a max-rate scenario."""
    path = os.path.join(out, f"{scenario}-{server}.best.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rate = json.load(f)["best_clean_rate"]
    return load(f"{scenario}-r{rate}-{server}") if rate else None


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}{unit}"
        return f"{v:.2f}{unit}"
    return f"{v}{unit}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


rows = []


def row(scenario, metric, get, servers, better):
    vals = {s: (get(r) if r else None) for s, r in servers.items()}
    names = list(servers)
    herald = vals[names[0]]
    cells = [fmt(vals[s]) for s in names]
    ratios = [ratio(herald, vals[s]) for s in names[1:]]
    rows.append((scenario, metric, better, cells, ratios, names))


rss = lambda r: (r.get("server_rss_per_connection_bytes") or 0) / 1024 if r.get("server_rss_per_connection_bytes") is not None else None
cpu = lambda r: r.get("server_cpu_us_per_delivery")
dps = lambda r: r.get("deliveries_per_second")
p50 = lambda r: r["latency_ms"]["p50"] if r["latency_ms"]["samples"] else None
p99 = lambda r: r["latency_ms"]["p99"] if r["latency_ms"]["samples"] else None
mx = lambda r: r["latency_ms"]["max"] if r["latency_ms"]["samples"] else None
# Loss is of the events the server accepted: with none accepted there is no loss to
# show (the "publishes failed" row says why).
loss = lambda r: r.get("loss_percent") if r.get("expected") else None
failed = lambda r: r.get("publish_failed")
conn = lambda r: r.get("connected")

trio = ["herald", "nchan", "fse"]
for sc in ["idle-1k", "idle-19k", "idle-topics"]:
    servers = {s: load(f"{sc}-{s}") for s in trio}
    if any(servers.values()):
        row(sc, "connected", conn, servers, "higher")
        row(sc, "server RSS per connection (KiB)", rss, servers, "lower")
for sc in ["fanout", "fanout-10k", "spread"]:
    servers = {s: load(f"{sc}-{s}") for s in trio}
    if any(servers.values()):
        row(sc, "deliveries/s", dps, servers, "higher")
        row(sc, "publishes failed", failed, servers, "lower")
        row(sc, "loss (%)", loss, servers, "lower")
        row(sc, "latency p50 (ms)", p50, servers, "lower")
        row(sc, "latency p99 (ms)", p99, servers, "lower")
        row(sc, "latency max (ms)", mx, servers, "lower")
        row(sc, "server CPU per delivery (µs)", cpu, servers, "lower")
for sc in ["fanout", "fanout-10k"]:
    # Herald with --write-linger against the peers' runs of the same scenario.
    servers = {s: load(f"{sc}-{s}") for s in ["herald-linger", "nchan", "fse"]}
    if servers["herald-linger"]:
        label = f"{sc} (Herald --write-linger)"
        row(label, "deliveries/s", dps, servers, "higher")
        row(label, "loss (%)", loss, servers, "lower")
        row(label, "latency p50 (ms)", p50, servers, "lower")
        row(label, "latency p99 (ms)", p99, servers, "lower")
        row(label, "server CPU per delivery (µs)", cpu, servers, "lower")
servers = {s: best("max-rate", s) for s in trio}
if any(servers.values()):
    row("max-rate", "highest clean deliveries/s", dps, servers, "higher")
    # What the server took at that step (publishes wait on it), not what was asked.
    row("max-rate", "events/s published at that step", lambda r: r["publish_rate"], servers, "higher")
    row("max-rate", "latency p99 there (ms)", p99, servers, "lower")
    row("max-rate", "server CPU per delivery there (µs)", cpu, servers, "lower")
duo = ["herald-redis", "nchan-redis"]
servers = {s: load(f"redis-fanout-{s}") for s in duo}
if any(servers.values()):
    row("redis-fanout", "deliveries/s", dps, servers, "higher")
    row("redis-fanout", "publishes failed", failed, servers, "lower")
    row("redis-fanout", "loss (%)", loss, servers, "lower")
    row("redis-fanout", "latency p99 (ms)", p99, servers, "lower")
    row("redis-fanout", "server CPU per delivery (µs)", cpu, servers, "lower")
servers = {s: best("redis-max-rate", s) for s in duo}
if any(servers.values()):
    row("redis-max-rate", "highest clean deliveries/s", dps, servers, "higher")
    row("redis-max-rate", "latency p99 there (ms)", p99, servers, "lower")
so = load("scale-out-herald-6x")
if so:
    servers = {"herald-6x": so}
    row("scale-out", "connected", conn, servers, "higher")
    row("scale-out", "loss (%)", loss, servers, "lower")
    row("scale-out", "deliveries", lambda r: r["received"], servers, "higher")
    row("scale-out", "server RSS per connection (KiB)", rss, servers, "lower")
    row("scale-out", "latency p99 (ms)", p99, servers, "lower")

print("| scenario | metric | better | Herald | peers | Herald / peer |")
print("|---|---|---|---|---|---|")
for sc, metric, better, cells, ratios, names in rows:
    peers = ", ".join(f"{n}: {c}" for n, c in zip(names[1:], cells[1:])) or "-"
    rs = ", ".join(f"{n}: {r}" for n, r in zip(names[1:], ratios)) or "-"
    print(f"| {sc} | {metric} | {better} | {cells[0]} | {peers} | {rs} |")

#!/usr/bin/env python3
"""Generates the Grafana dashboards of this directory (standard library only).

    python3 dashboards/build.py          # rewrite the JSON files
    python3 dashboards/build.py --check  # exit 1 if a JSON file differs from what this writes

The dashboards use a `datasource` variable (no datasource UID is hard-coded) and the `job`,
`instance` and `port` variables; every panel has a description (docs/dashboards.md lists them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job="$job",instance="$instance",port="$port"'


def variables(port: bool = True, instance_multi: bool = False) -> dict:
    v = [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "options": []},
        {"name": "job", "label": "Job", "type": "query", "datasource": DS, "refresh": 2, "sort": 1,
         "query": {"query": "label_values(drainwatch_build_info, job)", "refId": "job"},
         "definition": "label_values(drainwatch_build_info, job)", "current": {}, "options": []},
        {"name": "instance", "label": "Instance", "type": "query", "datasource": DS, "refresh": 2, "sort": 1,
         "multi": instance_multi, "includeAll": instance_multi,
         "query": {"query": 'label_values(drainwatch_build_info{job="$job"}, instance)', "refId": "instance"},
         "definition": 'label_values(drainwatch_build_info{job="$job"}, instance)', "current": {}, "options": []},
    ]
    if port:
        q = 'label_values(drainwatch_listening{job="$job",instance=~"$instance"}, port)'
        v.append({"name": "port", "label": "Port", "type": "query", "datasource": DS, "refresh": 2, "sort": 3,
                  "query": {"query": q, "refId": "port"}, "definition": q, "current": {}, "options": []})
    return {"list": v}


class Board:
    def __init__(self, uid: str, title: str, description: str) -> None:
        self.uid, self.title, self.description = uid, title, description
        self.panels: list[dict] = []
        self.x = self.y = 0
        self.row_h = 0

    def panel(self, kind: str, title: str, description: str, targets: list[tuple[str, str]],
              w: int = 12, h: int = 8, unit: str | None = None, **extra) -> None:
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.row_h
            self.row_h = 0
        p = {
            "id": len(self.panels) + 1, "type": kind, "title": title, "description": description,
            "datasource": DS, "gridPos": {"x": self.x, "y": self.y, "w": w, "h": h},
            "targets": [{"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(65 + i)}
                        for i, (expr, legend) in enumerate(targets)],
            "fieldConfig": {"defaults": {"unit": unit} if unit else {}, "overrides": []},
            "options": {},
        }
        p.update(extra)
        self.panels.append(p)
        self.x += w
        self.row_h = max(self.row_h, h)

    def json(self, templating: dict, annotations: list[dict] | None = None, time_from: str = "now-1h") -> dict:
        return {
            "uid": self.uid, "title": self.title, "description": self.description,
            "tags": ["drainwatch"], "editable": True, "schemaVersion": 39, "version": 1,
            "graphTooltip": 1, "refresh": "10s", "time": {"from": time_from, "to": "now"},
            "timezone": "", "templating": templating,
            "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                      "enable": True, "hide": True, "name": "Annotations & Alerts",
                                      "type": "dashboard", "iconColor": "rgba(0, 211, 255, 1)"},
                                     *(annotations or [])]},
            "links": [{"title": "drainwatch dashboards", "type": "dashboards", "tags": ["drainwatch"],
                       "asDropdown": True}],
            "panels": self.panels,
        }


def annotation(name: str, expr: str, color: str) -> dict:
    return {"name": name, "datasource": DS, "enable": True, "iconColor": color, "expr": expr,
            "step": "10s", "titleFormat": name, "textFormat": "port {{port}} on {{instance}}",
            "useValueForTime": False}


def drain_overview() -> dict:
    b = Board("drainwatch-drain", "drainwatch / Drain overview",
              "One backend, one port: is it safe to remove, what is left, and did the removal hurt.")
    b.panel("stat", "Phase", "The drain phase of the port: serving (new connections arrive), draining "
            "(none arrive, active connections remain), drained (safe to remove), stopped (no listener).",
            [(f"max by (phase) (drainwatch_drain_phase{{{SEL}}}) == 1", "{{phase}}")], w=6, h=4,
            options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                     "textMode": "name", "colorMode": "background"})
    b.panel("stat", "Safe to remove", "1 when no new connection arrived for the quiet window and the active "
            "connections stayed within the thresholds for the hold samples (drainwatch_drain_ready).",
            [(f"drainwatch_drain_ready{{{SEL}}}", "ready")], w=6, h=4,
            fieldConfig={"defaults": {"mappings": [{"type": "value", "options": {
                "0": {"text": "not yet", "color": "orange"}, "1": {"text": "ready", "color": "green"}}}]},
                "overrides": []})
    b.panel("stat", "ETA", "Seconds until the active connections reach the thresholds at the rate of the "
            "last minute; empty while they do not decrease.",
            [(f"drainwatch_drain_eta_seconds{{{SEL}}}", "ETA")], w=6, h=4, unit="s")
    b.panel("stat", "Stalled", "1 when the active connections above the thresholds did not decrease over the "
            "last minute of a drain (see DrainwatchDrainStalled).",
            [(f"drainwatch_drain_stalled{{{SEL}}}", "stalled")], w=6, h=4)
    b.panel("timeseries", "New connections", "Connections opened per second by class. After the load "
            "balancer's drain, everything but probes must reach 0; the annotation marks when it did.",
            [(f"sum by (class) (rate(drainwatch_connections_opened_total{{{SEL}}}[1m]))", "{{class}}")], unit="cps")
    b.panel("timeseries", "Active connections by class", "Connections the application has not closed "
            "(ESTABLISHED and CLOSE_WAIT) by class: what a drain waits for.",
            [(f'sum by (class) (drainwatch_connections{{{SEL},state=~"established|close_wait"}})', "{{class}}")])
    b.panel("timeseries", "Late arrivals after the drain mark", "Connections (probes excluded) opened "
            "after the drain was marked with POST /drain/start: how long the load balancer kept sending.",
            [(f"drainwatch_connections_opened_after_drain_total{{{SEL}}}", "opened after the mark")])
    b.panel("timeseries", "TCP state mix", "Sockets of the port per TCP state. CLOSE_WAIT piling up means "
            "the application does not close connections; TIME_WAIT follows the server's closes.",
            [(f"sum by (state) (drainwatch_connections{{{SEL}}})", "{{state}}")])
    b.panel("bargauge", "Open connections by age", "Open connections at least N seconds old: the ones "
            "that will hold the drain up (a lower bound for connections older than drainwatch).",
            [(f"sum by (older_than) (drainwatch_open_connections_by_age{{{SEL}}})", ">= {{older_than}}s")],
            options={"orientation": "horizontal", "displayMode": "gradient"})
    b.panel("bargauge", "Open connections by idle time", "Open connections idle (no data either way) for at "
            "least N seconds: idle keep-alives close at the server's keep-alive timeout.",
            [(f"sum by (idle_over) (drainwatch_open_connections_by_idle{{{SEL}}})", ">= {{idle_over}}s")],
            options={"orientation": "horizontal", "displayMode": "gradient"})
    b.panel("timeseries", "Resets by direction and reason", "RSTs per second sent (with the kernel's "
            "reason) and received on the port's connections. A hard cut shows as sent/no-socket and "
            "sent/abort-on-close.",
            [(f"sum by (direction, reason) (rate(drainwatch_resets_total{{{SEL}}}[1m]))", "{{direction}} {{reason}}")],
            unit="pps")
    b.panel("timeseries", "Closes by reason", "Connections closed per second by how they ended: fin, "
            "reset, timeout (unknown without tracepoints).",
            [(f"sum by (reason) (rate(drainwatch_connections_closed_total{{{SEL}}}[1m]))", "{{reason}}")], unit="cps")
    b.panel("timeseries", "Timeouts", "Connections the kernel gave up on (ETIMEDOUT) in 5 minutes, by class: "
            "peers that vanished without FIN or RST.",
            [(f"sum by (class) (increase(drainwatch_connection_timeouts_total{{{SEL}}}[5m]))", "{{class}}")])
    b.panel("timeseries", "Retransmitting connections", "Open connections whose retransmission timer fired "
            "and whose data is unacknowledged: rising means packets vanish (a blackhole), before timeouts.",
            [(f"sum by (class) (drainwatch_retransmitting_connections{{{SEL}}})", "{{class}}")])
    b.panel("timeseries", "Listener and accept queue", "1 while the port has a listener (0 after a graceful "
            "shutdown closed it), and the connections waiting in its accept queue.",
            [(f"drainwatch_listening{{{SEL}}}", "listening"),
             (f"drainwatch_listen_queue_length{{{SEL}}}", "accept queue")], w=24)
    sel = SEL
    ann = [
        annotation("Drain marked", f"changes(drainwatch_drain_started_timestamp_seconds{{{sel}}}[1m]) > 0", "blue"),
        annotation("New connections at 0",
                   f"drainwatch:connections_opened:rate1m{{{sel}}} == 0 "
                   f"and drainwatch:connections_opened:rate1m{{{sel}}} offset 1m > 0", "green"),
        annotation("Listener gone", f"drainwatch_listening{{{sel}}} == 0 and drainwatch_listening{{{sel}}} offset 30s == 1",
                   "red"),
    ]
    return b.json(variables(), ann)


def fleet_deploy() -> dict:
    b = Board("drainwatch-fleet", "drainwatch / Fleet deploy",
              "Every backend of a job during a deploy: who drains, where new connections go, and the damage.")
    j = 'job="$job"'
    b.panel("table", "Drain phase per backend", "Each backend's ports and their drain phase now.",
            [(f"max by (instance, port, phase) (drainwatch_drain_phase{{{j}}}) == 1", "")], w=12, h=8,
            options={"showHeader": True},
            transformations=[{"id": "labelsToFields", "options": {}}])
    b.panel("timeseries", "Backends safe to remove", "drainwatch_drain_ready per backend and port.",
            [(f"drainwatch_drain_ready{{{j}}}", "{{instance}}:{{port}}")], w=12, h=8)
    b.panel("timeseries", "Where new connections go", "New connections per second per backend (probes "
            "excluded): a drained backend drops to 0, the survivors take its share.",
            [(f"drainwatch:connections_opened:rate1m{{{j}}}", "{{instance}}:{{port}}")], unit="cps")
    b.panel("timeseries", "New connections vs baseline", "Each backend's new-connection rate over its "
            "average of the last hour: above 3 on a survivor is a reconnect flood.",
            [(f"drainwatch:connections_opened:rate1m{{{j}}} / drainwatch:connections_opened:rate1m:avg1h{{{j}}}",
              "{{instance}}:{{port}}")])
    b.panel("timeseries", "Active connections per backend", "Connections the applications have not closed, "
            "per backend: a draining backend's line goes to its threshold.",
            [(f"drainwatch:connections_active{{{j}}}", "{{instance}}:{{port}}")])
    b.panel("timeseries", "Resets across the fleet", "RSTs per second per backend and direction: the removed "
            "backend's resets, then its clients' reconnects elsewhere.",
            [(f"sum by (instance, direction) (drainwatch:resets:rate1m{{{j}}})", "{{instance}} {{direction}}")],
            unit="pps")
    b.panel("timeseries", "Timeouts across the fleet", "Connections that ended by timeout in 5 minutes per "
            "backend.",
            [(f"drainwatch:connection_timeouts:increase5m{{{j}}}", "{{instance}}:{{port}}")], w=24)
    return b.json(variables(port=False))


def session_lifetimes() -> dict:
    b = Board("drainwatch-lifetimes", "drainwatch / Session lifetimes",
              "How long connections live, per class, over days: to set drain deadlines, proxy_read_timeout "
              "and WebSocket ping intervals.")
    s = 'job="$job",instance=~"$instance",port="$port"'
    b.panel("heatmap", "Lifetime distribution", "Closed connections per lifetime bucket over time (first "
            "sighting to close).",
            [(f"sum by (le) (increase(drainwatch_connection_duration_seconds_bucket{{{s}}}[$__rate_interval]))", "{{le}}")],
            w=24, h=9, options={"calculate": False, "yAxis": {"unit": "s"}})
    for q in ("0.5", "0.95", "0.99"):
        b.panel("timeseries", f"p{int(float(q) * 100)} lifetime by class",
                f"The {q} quantile of connection lifetimes per class over the last 6 hours (histogram buckets "
                "from 0.1 s to 7 days).",
                [(f"histogram_quantile({q}, sum by (le, class) (increase(drainwatch_connection_duration_seconds_bucket{{{s}}}[6h])))",
                  "{{class}}")], w=8, unit="s")
    b.panel("timeseries", "Recommended drain timeout", "drainwatch's advice per class: the upper bound of the "
            "bucket holding the 99th percentile of observed lifetimes.",
            [(f"max by (class) (drainwatch_recommended_drain_timeout_seconds{{{s}}})", "{{class}}")], unit="s")
    b.panel("timeseries", "Oldest open connection", "Age of the oldest open connection per class (a lower "
            "bound for connections older than drainwatch).",
            [(f"max by (class) (drainwatch_oldest_connection_age_seconds{{{s}}})", "{{class}}")], unit="s")
    b.panel("timeseries", "Closes per class", "Connections closed per second by class.",
            [(f"sum by (class) (rate(drainwatch_connections_closed_total{{{s}}}[5m]))", "{{class}}")], unit="cps")
    b.panel("timeseries", "Upgrades to WebSocket", "Connections that moved from http to websocket once "
            "evidence appeared.",
            [(f"sum(rate(drainwatch_connections_upgraded_total{{{s}}}[5m]))", "upgraded")], unit="cps")
    return b.json(variables(instance_multi=True), time_from="now-7d")


BOARDS = {"drain-overview.json": drain_overview, "fleet-deploy.json": fleet_deploy,
          "session-lifetimes.json": session_lifetimes}


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for name, build in BOARDS.items():
        text = json.dumps(build(), indent=2) + "\n"
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("out of date (run python3 dashboards/build.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

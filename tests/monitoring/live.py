#!/usr/bin/env python3
"""Checks of tests/monitoring/run against a running Prometheus (HTTP API).

    live.py serving PROM_URL INSTANCE DASHBOARD_JSON
        up == 1 for INSTANCE; every rule group healthy (health "ok", no
        lastError); every target of every dashboard panel returns at least
        one series with a number (not NaN), with the dashboard's variables
        substituted.
    live.py down PROM_URL INSTANCE
        waits until ChappeRelayDown's expression is true for INSTANCE and
        the alert is pending or firing.

Prints one line per check ("ok ..." or "FAIL ...") and a closing
"N passed, M failed"; exits 1 if any failed.
"""

import json
import sys
import time
import urllib.parse
import urllib.request

passed = 0
failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)


def api(base, path, **params):
    url = f"{base}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body}")
    return body["data"]


def query(base, expr):
    return api(base, "query", query=expr)["result"]


def wait_for(what, fn, seconds):
    """Polls fn() until it returns a true value or the time is up; returns the last value."""
    end = time.monotonic() + seconds
    while True:
        value = fn()
        if value or time.monotonic() > end:
            return value
        time.sleep(0.5)


def rule_problems(base):
    problems = []
    groups = api(base, "rules")["groups"]
    if not groups:
        problems.append("no rule groups loaded")
    for g in groups:
        for r in g["rules"]:
            if r.get("health") != "ok" or r.get("lastError"):
                problems.append(f"{g['name']}/{r.get('name')}: health={r.get('health')} {r.get('lastError', '')}")
    return problems, sum(len(g["rules"]) for g in groups), len(groups)


def panel_targets(dashboard):
    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))
    for p in walk(dashboard["panels"]):
        for t in p.get("targets", []):
            if "expr" in t:
                yield p["title"], t["refId"], t["expr"]


def numbers(result):
    """The series of a query result whose value is a number (NaN draws nothing)."""
    return [r for r in result if r["value"][1] not in ("NaN", "+Inf", "-Inf")]


def substitute(expr, instance):
    for var, value in [("$__rate_interval", "1m"), ("$__interval", "15s"), ("$__range", "5m"),
                       ("${datasource}", ""), ("$datasource", ""),
                       ("${instance}", instance), ("$instance", instance)]:
        expr = expr.replace(var, value)
    if "$" in expr:
        raise ValueError(f"unsubstituted variable in {expr}")
    return expr


def serving(base, instance, dashboard_path):
    inst = instance.replace(".", "\\\\.")  # a regex inside a PromQL string
    up = wait_for("up", lambda: query(base, f'up{{job="chappe", instance="{instance}"}} == 1'), 20)
    check(bool(up), f"up{{job=\"chappe\", instance=\"{instance}\"}} == 1")

    def healthy():
        problems, _, _ = rule_problems(base)
        return not problems
    wait_for("rules", healthy, 20)
    problems, rules, groups = rule_problems(base)
    check(not problems, f"{groups} rule groups, {rules} rules, all evaluated without error"
          + "".join(f"\n       {p}" for p in problems))

    dashboard = json.load(open(dashboard_path))
    for title, ref, expr in panel_targets(dashboard):
        q = substitute(expr, inst)
        drawn = wait_for(title, lambda: numbers(query(base, q)), 10)
        sample = ""
        if drawn:
            labels = ", ".join(f"{k}={v}" for k, v in sorted(drawn[0]["metric"].items()) if k not in ("job", "instance"))
            sample = f" e.g. {{{labels}}} = {float(drawn[0]['value'][1]):.6g}"
        check(bool(drawn), f"panel {title!r} {ref}: {len(drawn)} series with a value{sample}  [{q}]")


def down(base, instance):
    expr = f'up{{job="chappe", instance="{instance}"}} == 0'
    t0 = time.monotonic()
    result = wait_for("down", lambda: query(base, expr), 30)
    check(bool(result), f"ChappeRelayDown expression true {time.monotonic() - t0:.1f} s after the relay stopped [{expr}]")
    alert = wait_for("alert", lambda: query(base, f'ALERTS{{alertname="ChappeRelayDown", instance="{instance}"}}'), 15)
    check(bool(alert), "ChappeRelayDown " + (alert[0]["metric"]["alertstate"] if alert else "not raised"))


def main(argv):
    if len(argv) >= 4 and argv[1] == "serving":
        serving(argv[2], argv[3], argv[4])
    elif len(argv) == 4 and argv[1] == "down":
        down(argv[2], argv[3])
    else:
        sys.exit(__doc__)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

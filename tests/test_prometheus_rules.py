"""deploy/prometheus: the scrape config and the rules, checked by promtool (Debian's
prometheus package, installed by the set-up), and the rules' unit tests run by it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from meterstream.dev.processes import require
from tests.helpers import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
PROCESSES = ("tail", "syslog", "sync-config", "worker", "sink-postgres", "vault")


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_check_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_has_every_process_at_its_unit_port() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert set(jobs) == {f"meterstream-{p}" for p in PROCESSES}
    for process in PROCESSES:
        unit = (ROOT / "deploy" / "systemd" / f"meterstream-{process}.service").read_text()
        port = next(line.split("=")[-1] for line in unit.splitlines() if line.startswith("Environment=MS_HTTP__PORT="))
        assert jobs[f"meterstream-{process}"] == [f"127.0.0.1:{port}"]


def test_check_rules() -> None:
    result = promtool("check", "rules", "meterstream.rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", "meterstream.rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_unit_tests_can_fail(tmp_path: Path) -> None:
    """promtool compares what fired with what a case expects: a wrong expectation fails."""
    (tmp_path / "meterstream.rules.yml").write_text((PROMETHEUS / "meterstream.rules.yml").read_text())
    cases = (PROMETHEUS / "meterstream.rules.test.yml").read_text()
    (tmp_path / "t.yml").write_text(cases.replace("is down (not scraped)", "is fine"))
    assert promtool("test", "rules", "t.yml", cwd=tmp_path).returncode != 0


def test_every_alert_is_tested_firing_and_quiet() -> None:
    rules = yaml.safe_load((PROMETHEUS / "meterstream.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    cases = yaml.safe_load((PROMETHEUS / "meterstream.rules.test.yml").read_text())
    fired: set[str] = set()
    quiet: set[str] = set()
    for test in cases["tests"]:
        for case in test.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert alerts - fired == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested quiet"


def test_every_alert_says_what_and_how_bad() -> None:
    rules = yaml.safe_load((PROMETHEUS / "meterstream.rules.yml").read_text())
    docs = (ROOT / "docs" / "operations.md").read_text()
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
                assert rule["annotations"]["summary"], rule["alert"]
                assert rule["alert"] in docs, f"{rule['alert']} is not explained in docs/operations.md"

"""The reference documentation cannot drift from the code: the configuration reference against the
keys the loader reads, the template pages against the variables the templates use, the CLI
reference against the commands, the metrics table against the metrics, and the systemd unit
against systemd itself."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
from jinja2 import meta

from intake.cli import _parser
from intake.cli_help import walk
from intake.config_schema import accepted_keys
from intake.metrics import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HEADING = re.compile(r"^#{2,4} \[\[?([A-Za-z_.]+)\]\]?")
CELL_SPLIT = re.compile(r"(?<!\\)\|")


def reference_tables(text: str) -> dict[str, list[list[str]]]:
    """`## [table]` heading -> the rows of the table under it (cells stripped, header rows left out)."""
    tables: dict[str, list[list[str]]] = {}
    current = None
    for line in text.splitlines():
        if heading := HEADING.match(line):
            current = heading.group(1)
            tables.setdefault(current, [])
        elif line.startswith("#"):
            current = None
        elif current and line.startswith("| `"):
            tables[current].append([cell.strip() for cell in CELL_SPLIT.split(line.strip())[1:-1]])
    return tables


def documented_keys(tables: dict[str, list[list[str]]]) -> dict[str, set[str]]:
    return {table: {key for row in rows for key in re.findall(r"`([a-z_][a-z0-9_]*)`", row[0])}
            for table, rows in tables.items()}


def test_every_key_the_loader_accepts_is_documented_and_no_other() -> None:
    documented = documented_keys(reference_tables((DOCS / "configuration.md").read_text()))
    accepted = accepted_keys()
    assert set(documented) == set(accepted), "tables: " + str(set(documented) ^ set(accepted))
    for table, keys in accepted.items():
        assert documented[table] == keys, (f"[{table}] undocumented: {sorted(keys - documented[table])}, "
                                           f"unknown: {sorted(documented[table] - keys)}")


def test_every_documented_key_has_a_default_and_an_example() -> None:
    for table, rows in reference_tables((DOCS / "configuration.md").read_text()).items():
        for row in rows:
            assert len(row) == 4, (table, row)
            key, default, example, _ = row
            assert default and example, f"[{table}] {key}: default {default!r}, example {example!r}"


def test_the_schema_is_what_the_loader_reads(tmp_path: Path) -> None:
    """The probe covers every kind of table: keys only reachable in nested tables are there."""
    accepted = accepted_keys()
    assert {"host", "password_env", "reconnect_max_seconds"} <= accepted["mailboxes.imap"]
    assert {"severity", "header", "has_attachment"} <= accepted["routing.rules.match"]
    assert {"log_format", "log_level", "redact_addresses"} <= accepted["service"]
    assert accepted["metrics"] == {"host", "port"}


def test_the_reference_parser_reads_a_drifted_reference_as_drift() -> None:
    text = (DOCS / "configuration.md").read_text().replace("| `warn_at` |", "| `warn_after` |")
    documented = documented_keys(reference_tables(text))
    assert "warn_after" in documented["sla"] and "warn_at" not in documented["sla"]


def template_variables(name: str) -> set[str]:
    """Every variable the template's files use, with what they extend or include."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROOT / "templates"))
    env.filters.update(datetime=str, date=str, without_tags=str)
    found: set[str] = set()
    todo, seen = [f"{name}/{part.name}" for part in (ROOT / "templates" / name).iterdir()], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = env.parse(env.loader.get_source(env, path)[0])      # type: ignore[union-attr]
        found |= meta.find_undeclared_variables(tree)
        todo.extend(ref for ref in meta.find_referenced_templates(tree) if ref)
    return found


TEMPLATES = sorted(p.name for p in (ROOT / "templates").iterdir() if p.is_dir() and not p.name.startswith("_"))


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_template_has_a_page_naming_every_variable_it_receives(name: str) -> None:
    page = DOCS / "templates" / f"{name}.md"
    assert page.is_file(), f"no page for template {name}"
    text = page.read_text()
    missing = sorted(v for v in template_variables(name) if f"`{v}`" not in text)
    assert not missing, f"{page.name} does not document {missing}"
    assert f"templates/{name}.md" in (DOCS / "templates.md").read_text()


def test_no_page_for_a_template_that_does_not_exist() -> None:
    assert sorted(p.stem for p in (DOCS / "templates").glob("*.md")) == TEMPLATES


def test_every_command_is_in_the_cli_reference() -> None:
    text = (DOCS / "cli.md").read_text()
    leaves = [path for path, parser in walk(_parser()) if path and not any(
        other.startswith(path + " ") for other, _ in walk(_parser()))]
    assert len(leaves) >= 16
    missing = [path for path in leaves if f"`intake {path}" not in text]
    assert not missing, missing
    for code in ("`0`", "`1`", "`2`"):
        assert f"| {code} |" in text


def test_every_metric_is_in_the_operations_reference() -> None:
    text = (DOCS / "operations.md").read_text()
    names = {metric.name for metric in REGISTRY.collect() if metric.name.startswith("intake_")}
    assert {"intake_mails_received", "intake_imap_state"} <= names
    missing = sorted(name for name in names if not re.search(rf"`{name}(_total)?`", text))
    assert not missing, missing
    for gauge in ("intake_outbox_depth", "intake_outbox_oldest_pending_age_seconds", "intake_quarantine_size",
                  "intake_database_up"):
        assert f"`{gauge}`" in text


def test_the_docs_link_to_pages_that_exist() -> None:
    for page in [*DOCS.glob("*.md"), *DOCS.glob("templates/*.md"), ROOT / "README.md"]:
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name}: {target}"
        for target in re.findall(r"`(docs/[\w/]+\.md|deploy/[\w.]+)`", page.read_text()):
            assert (ROOT / target).exists(), f"{page.name}: {target}"


def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = (ROOT / "deploy" / "intake.service").read_text()
    for line in ("Restart=on-failure", "User=intake", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in unit.splitlines(), line
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (the unit is checked where systemd is)")
    # verify wants ExecStart's program to exist: point it at this virtualenv's `intake`, nothing else changes
    installed = Path(sys.executable).parent / "intake"
    assert "ExecStart=/opt/intake/venv/bin/intake serve" in unit
    copy = tmp_path / "intake.service"
    copy.write_text(unit.replace("/opt/intake/venv/bin/intake", str(installed)))
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout + done.stderr) == (0, ""), done.stdout + done.stderr


def test_the_postfix_settings_of_the_deploy_guide_are_all_known_to_postfix(tmp_path: Path) -> None:
    postconf = shutil.which("postconf") or ("/usr/sbin/postconf" if Path("/usr/sbin/postconf").exists() else None)
    if postconf is None:
        pytest.skip("Postfix is not installed here (apt-get install postfix to check the guide's main.cf)")
    guide = (DOCS / "deploy.md").read_text()
    main_cf = guide.split("`/etc/postfix/main.cf` (additions):\n\n```\n", 1)[1].split("```", 1)[0]
    assert "transport_maps" in main_cf and "relayhost" in main_cf
    (tmp_path / "main.cf").write_text(main_cf)
    (tmp_path / "master.cf").write_text("")
    done = subprocess.run([postconf, "-c", str(tmp_path), "-n"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "unused parameter" not in done.stderr, done.stderr

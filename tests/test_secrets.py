"""No committed secrets: every file git tracks, and every new file it would add (`git ls-files
--cached --others --exclude-standard`: nothing git-ignored), is scanned for private keys, AWS-style
access keys, Slack webhook URLs, password literals with values and `.env` files. A finding names
the file and the line."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

_PASSWORD_KEY = r"""(?<![${])\b[A-Za-z0-9_]*pass(?:word|wd)\b["']?\s*(?:=|:)(?!=)\s*"""
# A value that only refers to where the secret really is: a ${VAR} / $VAR reference or a
# placeholder in angle brackets.
_NOT_A_REFERENCE = r"(?!\$|<)"
RULES: dict[str, re.Pattern[str]] = {
    "private key": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(
        r"aws_?secret_?access_?key\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{40}\b", re.IGNORECASE
    ),
    "Slack webhook URL": re.compile(r"hooks\.slack\.com/services/[A-Za-z0-9_]+/[A-Za-z0-9_]+/[A-Za-z0-9_]+"),
    # A key named ...password / ...passwd given a quoted literal: `password = "hunter22"`.
    "password literal": re.compile(
        _PASSWORD_KEY + r"""(["'])""" + _NOT_A_REFERENCE + r"""[^"'\s]{4,}\1""", re.I
    ),
    "credentials in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s:/@${}]*:(?!\$\{)[^\s@/${}]{3,}@"),
}
# Outside code, an unquoted value is a literal too (`PASSWORD=hunter22`, `password: hunter22`); in
# code it is an expression (`password=self.password`).
CONFIG_RULES = {
    "password literal": re.compile(
        _PASSWORD_KEY + _NOT_A_REFERENCE + r"""[^\s"',;)({}]{4,}\s*(?:#.*)?$""", re.I
    ),
}
CODE_SUFFIXES = {".py"}
# The marker of a line whose credential-looking text is deliberate (detect-secrets' convention).
ALLOW = "pragma: allowlist secret"
# Files whose contents are fixtures of this scanner.
SCANNER_FIXTURES = {"tests/test_secrets.py"}


def tracked_files() -> list[str]:
    """Paths git tracks, plus new files it does not ignore, relative to the repository root."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    return [p for p in out.stdout.decode().split("\0") if p]


def is_env_file(path: str) -> bool:
    """A dotenv file that may hold real values (`.env`, `prod.env`, `.env.local`), not a template."""
    name = Path(path).name
    if name in {".env.example", ".env.template", ".env.sample"}:
        return False
    return name == ".env" or name.endswith(".env") or name.startswith(".env.")


def scan_text(text: str, code: bool = False) -> list[tuple[int, str]]:
    """(line number, rule) of every secret-looking line of a text (of code, or of anything else)."""
    rules = list(RULES.items()) + ([] if code else list(CONFIG_RULES.items()))
    return [
        (lineno, rule)
        for lineno, line in enumerate(text.splitlines(), 1)
        if ALLOW not in line
        for rule, pattern in rules
        if pattern.search(line)
    ]


def scan_tree(files: list[str]) -> list[str]:
    """Findings, as `path:line: rule`, over the given repository-relative files."""
    findings = [
        f"{p}:1: a .env file is committed (keep it local; commit .env.example)"
        for p in files
        if is_env_file(p)
    ]
    for rel in files:
        path = REPO / rel
        if rel in SCANNER_FIXTURES or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary files: parquet, png
        code = path.suffix in CODE_SUFFIXES
        findings += [f"{rel}:{lineno}: {rule}" for lineno, rule in scan_text(text, code)]
    return findings


def test_tracked_tree_has_no_secrets() -> None:
    files = tracked_files()
    assert files, "git ls-files returned nothing: not a git work tree?"
    findings = scan_tree(files)
    assert not findings, "possible committed secrets:\n" + "\n".join(findings)


@pytest.mark.parametrize(
    "line, rule, code",
    [
        ("-----BEGIN RSA PRIVATE KEY-----", "private key", False),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "private key", True),
        ("aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "AWS access key id", False),
        ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "AWS secret access key", False),
        ("url: https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX", "Slack webhook URL", False),
        ("password=hunter22", "password literal", False),
        ("  POSTGRES_PASSWORD: airflow", "password literal", False),
        ("AIRFLOW_ADMIN_PASSWORD=hunter22  # for now", "password literal", False),
        ('db_password = "s3cr3t!"', "password literal", True),
        ('connect(user="u", password="hunter22")', "password literal", True),
        ('{"username": "admin", "password": "admin"}', "password literal", True),
        ("sql_alchemy_conn = postgresql://airflow:airflow@postgres/airflow", "credentials in a URL", False),
        ('URL = "redis://:hunter22@redis:6379/0"', "credentials in a URL", True),
    ],
)
def test_scanner_finds(line: str, rule: str, code: bool) -> None:
    assert (1, rule) in scan_text(line, code)


@pytest.mark.parametrize(
    "line, code",
    [
        ("POSTGRES_PASSWORD=", False),
        ("POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it in .env}", False),
        ("AIRFLOW_ADMIN_PASSWORD=<generate: openssl rand -hex 24>", False),
        ('--password "$${AIRFLOW_ADMIN_PASSWORD}"', False),
        ("postgresql+psycopg2://${POSTGRES_USER}:${POSTGRES_PASSWORD}@postgres/airflow", False),
        ("webhook_url_env: RECPIPE_SLACK_WEBHOOK_URL", False),
        ('password = os.environ["AIRFLOW_ADMIN_PASSWORD"]', True),
        ("connect(user=self.user, password=self.password)", True),
        ('{"username": name, "password": ui.password()}', True),
        ("if password == expected:", True),
        ('{"password": "admin"}  # pragma: allowlist secret', True),
    ],
)
def test_scanner_ignores_references(line: str, code: bool) -> None:
    assert scan_text(line, code) == []


@pytest.mark.parametrize(
    "path, flagged",
    [
        (".env", True),
        ("deploy/prod.env", True),
        (".env.local", True),
        (".env.example", False),
        ("env.py", False),
    ],
)
def test_env_files(path: str, flagged: bool) -> None:
    assert is_env_file(path) is flagged

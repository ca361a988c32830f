"""Secrets are replaced before anything else sees the text; ordinary code is left alone."""

import ast
import json

import pytest

from selftrain.data.scrub import PLACEHOLDER, find_secrets, scrub_fields, scrub_text

# Realistic fakes: the formats real credentials have (AWS's own documented example key,
# jwt.io's example token, ...), none of them live.
SECRETS = {
    "aws": ('client = boto3.client("s3", aws_access_key_id="AKIAIOSFODNN7EXAMPLE",\n'
            '                      aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")\n',
            ["AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"]),
    "github": ('GITHUB_TOKEN = "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"\n', ["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"]),
    "slack": ('webhook = {"token": "xoxb-1234567890123-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"}\n',
              ["xoxb-1234567890123-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"]),
    "jwt": ('session = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0'
            'IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"\n', ["SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV"]),
    "password": ('def connect():\n    password = "hunter2"\n    return login("admin", password)\n', ['"hunter2"']),
    "postgres url": ('DATABASE_URL = "postgres://app:s3cr3tpass@db.example.com:5432/app"\n', ["s3cr3tpass"]),
    "url with reserved chars": ('url = "postgresql://admin:S3cr3t!x@db.internal:5432/prod"\n', ["S3cr3t!x"]),
    "ado connection string": ('conn = "Server=tcp:db.example.com;Database=shop;User Id=app;Password=Tr0ub4dor&3;"\n',
                              ["Tr0ub4dor"]),
    "rsa private key": ('KEY = """-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi6XZ3vPy1v0uXBXrS2pSOZ6Kcu\n'
                        'b5VQb3VQn0m1YFi1PB0F2hUO8fSLSdDd8iV1cYrG3n2b4ZqY7m9Zb2lY9CkA5RJ0\n-----END RSA PRIVATE KEY-----"""\n'
                        '\n\ndef load():\n    return KEY\n', ["MIIEpAIBAAKCAQEA", "END RSA PRIVATE KEY", "BEGIN RSA"]),
    "stripe": ('stripe.api_key = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"\n', ["sk_live_4eC39HqLyjWDarjtT1zdp7dc"]),
    "bearer": ('headers = {"Authorization": "Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0"}\n', ["9f8e7d6c5b4a3928"]),
    "token assignment": ('auth_token = "a8f5f167f44f4964e6c998dee827110c"\n', ["a8f5f167f44f4964"]),
}


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_realistic_secrets_are_replaced_and_code_still_parses(name):
    code, secret_parts = SECRETS[name]
    out, findings = scrub_text(code)
    assert findings, name
    assert PLACEHOLDER in out
    for part in secret_parts:
        assert part not in out
    ast.parse(out)  # the placeholder landed inside a string literal
    assert scrub_text(out) == (out, [])  # scrubbing twice changes nothing


def test_vendor_plugins_that_are_gated_still_fire():
    # Stripe's and Artifactory's detectors only run when their literal prefix is present.
    for text in ('KEY = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"', 'ARTIFACTORY = "AKCp8jQ8tbqxrCjWDarjtT1zdp7dc"'):
        assert find_secrets(text), text


def test_a_secret_repeated_in_the_tests_is_replaced_there_too():
    fields, findings = scrub_fields({
        "code": 'API_KEY = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"\n',
        "tests": 'assert API_KEY == "sk_live_4eC39HqLyjWDarjtT1zdp7dc"\n'})
    assert findings and "sk_live" not in fields["tests"] and PLACEHOLDER in fields["tests"]


def test_a_short_password_is_replaced_only_on_its_own_line():
    code = 'password = "x7q"\nlabel = "x7q"\n'
    out, _ = scrub_text(code)
    assert out == f'password = "{PLACEHOLDER}"\nlabel = "x7q"\n'


ORDINARY = [
    'import hashlib\n\ndef digest(data: bytes) -> str:\n    """SHA-256 of data."""\n    return hashlib.sha256(data).hexdigest()\n',
    'def is_valid_ipv4(s: str) -> bool:\n    return s == "192.168.1.1" or s.count(".") == 3\n',
    'def check(password: str) -> bool:\n    """Strong: 8+ chars with a digit."""\n    return len(password) >= 8 and any(c.isdigit() for c in password)\n',
    'password = input("Password: ")\ntoken_pattern = r"[A-Za-z0-9_]+"\nuser_id = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"\n',
    'URL = "https://example.com/api/v1/items?page=2&sort=name"\nSECRET_KEY = os.environ["SECRET_KEY"]\n',
    'def connect(host, user, pwd):\n    return f"postgresql://{user}:{pwd}@{host}/app"\n',
]


@pytest.mark.parametrize("code", ORDINARY)
def test_ordinary_code_is_left_alone(code):
    assert scrub_text(code) == (code, [])


def test_no_false_positives_on_the_bundled_demo_data():
    from selftrain.cli import DEMO_INTERACTIONS

    for line in DEMO_INTERACTIONS.read_text().splitlines():
        row = json.loads(line)
        for text in (row["prompt"], row["response"]["code"], row["response"]["explanation"], row["tests"],
                     row["feedback"].get("corrected_code") or ""):
            assert scrub_text(text) == (text, []), row["id"]


def test_the_gate_shortcuts_agree_with_the_patterns_they_stand_for():
    """`might_hold_secrets` finds key names by substring searches and long tokens by a byte
    translation, and each precise pattern is searched only in texts holding its literals: on texts built to hit every edge (the
    names with and without '_', at the text's ends, letters IGNORECASE folds), they agree
    with plain regex searches."""
    import random
    import re

    from selftrain.data import scrub

    key_names = re.compile(r"(?:api|auth|access|service|account|db|database|priv|private|client)_?key|"
                           r"key_?pass|(?:db|database)_?pass")
    pieces = ["key", "pass", "db", "database", "_", "api", "priv", "private", "client", "x", " ", "\n", "-",
              "token", "Token", "://", "password=", "pwd=", ";", "'", '"', "?", "&", "Bearer ", "=", ":",
              "a1B2c3D4e5F6g7H8", "abcdefghijklmno", "ı", "ſ", "K", "credentıal", "API_KEY", "é", "+/=.",
              "x" * 15, "9" * 16]
    rng = random.Random(0)
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randrange(1, 12))) for _ in range(30000)]
    texts += [code for code, _ in SECRETS.values()] + ORDINARY
    # IGNORECASE matches 'ı' to i and 'ſ' to s, which lower() leaves alone
    texts += ['credentıal = "a1B2c3D4e5F6g7H8x"', 'conn = "Server=db;paſsword=hunter2;"']
    for text in texts:
        low = text.lower()
        assert scrub._names_a_key(low) == bool(key_names.search(low)), text
        assert scrub._long_tokens(text) == [m.group() for m in scrub._LONG_TOKEN.finditer(text)], text
        folded = scrub._folded(text)
        for pattern, _, _, needs in scrub._PATTERNS:
            if pattern.search(text):
                assert any(word in folded for word in needs), (pattern.pattern, text)

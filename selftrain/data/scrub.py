"""Replace secrets (API keys, tokens, passwords, private keys, credentials in connection
strings) with `<SECRET>` before any other stage, or any training run, sees the text.

Detection is detect-secrets' (Yelp): its vendor plugins (AWS, GitHub, GitLab, Slack,
Stripe, JWT, OpenAI, PyPI, npm, Twilio, SendGrid, ...) and its keyword detector
(`password = "..."`, `"api_key": "..."`), with its false-positive heuristics
(templated values, UUIDs, sequential strings, ids). Its high-entropy and public-IP
plugins are left out: they flag every short quoted word and every IP in a validator's
tests. A few precise patterns cover what it misses: whole private-key blocks (it flags
only the BEGIN line), connection strings whose password holds URL-reserved characters or
that use `Password=...;` pairs, bearer tokens, and long random values assigned to
token/credential names.

The placeholder lands where the secret was, usually inside a string literal, so code
that parsed still parses; if it would not (a secret written as a bare name), the
identifier-shaped `REDACTED_SECRET` is used instead.
"""

from __future__ import annotations

import ast
import functools
import re
from collections import Counter
from dataclasses import dataclass

PLACEHOLDER = "<SECRET>"
IDENTIFIER_PLACEHOLDER = "REDACTED_SECRET"

# detect-secrets plugins left out: they need context a training example does not have.
_SKIPPED_PLUGINS = {"Base64HighEntropyString", "HexHighEntropyString", "IPPublicDetector", "KeywordDetector"}

# detect-secrets runs every regex of every plugin over every line, ~300 µs for a short
# answer. Most of that is six plugins whose patterns cannot match without a literal that
# ordinary code rarely holds, so each runs only when its literal is present. (Read from
# the patterns of detect-secrets 1.5; the tests feed each plugin a secret it must catch.)
_GATES = {
    "CloudantDetector": re.compile(r"key|pwd|pw|pass|token|cloudant", re.I),
    "IbmCloudIamDetector": re.compile(r"key|pwd|pass|token", re.I),
    "IbmCosHmacDetector": re.compile(r"secret", re.I),
    "SoftlayerDetector": re.compile(r"key|pwd|pass|token|softlayer", re.I),
    "ArtifactoryDetector": re.compile(r"AKC|AP[0-9A-F]"),
    "StripeDetector": re.compile(r"k_live_"),
}

_PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY( BLOCK|)-----"
    # the whole block up to its END line; a block cut short, up to the last base64 run
    r"(?:.*?-----END \1PRIVATE KEY\2-----|(?:(?:\s|\\n)*[A-Za-z0-9+/=]{16,})*)", re.S)
# scheme://user:password@host; detect-secrets' BasicAuth stops at URL-reserved characters.
_URL_CREDENTIALS = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@'\"<>]+:([^\s@'\"<>/]+)@")
# ADO/ODBC pairs "Server=db;User Id=app;Password=s3cret;" and query strings "?user=app&password=x"
_PASSWORD_PAIR = re.compile(r"[;\"']\s*(?:password|passwd|pwd)=([^;'\"\s]+)(?=;|['\"])", re.I)
_PASSWORD_PARAM = re.compile(r"[?&](?:password|passwd|pwd)=([^&#'\"\s]+)", re.I)
_BEARER = re.compile(r"\bBearer\s+([A-Za-z0-9_\-+/=.]{16,})")
# A long random-looking value assigned to a name that says it is a credential.
_CREDENTIAL_ASSIGNMENT = re.compile(
    r"\b\w*(?:token|credential|access_?key|secret_?key|client_?secret|auth_?key|api_?key)\w*['\"]?"
    r"\s*[:=]\s*(['\"])([A-Za-z0-9_\-+/=.]{16,})\1", re.I)


# Values that only look assigned to a secret: flags and settings words (`'MODULE_PWD_STATE': 'yes'`).
_NOT_SECRETS = {"none", "null", "true", "false", "yes", "no", "on", "off", "enabled", "disabled",
                "missing", "required", "optional", "changeme", "password", "secret"}


@dataclass(frozen=True)
class Finding:
    kind: str  # detect-secrets' secret type, or one of our pattern names
    line: int  # 1-based, in the text it was found in


@functools.cache
def _detectors():
    """detect-secrets' plugins (imported on first use: the package is slow to import)."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.plugins.keyword import DENYLIST_REGEX, KeywordDetector

    plugins = [(cls(), _GATES.get(cls.__name__))
               for cls in get_mapping_from_secret_type_to_class().values()
               if cls.__name__ not in _SKIPPED_PLUGINS]
    return plugins, KeywordDetector(), re.compile(DENYLIST_REGEX, re.I)


def _is_false_positive(value: str, line: str) -> bool:
    """detect-secrets' own heuristics, plus our placeholder (scrubbing twice changes nothing)."""
    from detect_secrets.filters import heuristic

    return (PLACEHOLDER in value or IDENTIFIER_PLACEHOLDER in value
            or heuristic.is_templated_secret(value) or heuristic.is_not_alphanumeric_string(value)
            or heuristic.is_sequential_string(value) or heuristic.is_potential_uuid(value)
            or heuristic.is_prefixed_with_dollar_sign(value) or heuristic.is_likely_id_string(value, line)
            or value.lower() in _NOT_SECRETS)


def find_secrets(text: str) -> list[tuple[int, str, str]]:
    """(line index, secret value, kind) for every secret detect-secrets sees in `text`.

    detect-secrets scans line by line; here only the lines `might_hold_secrets` lets
    through are scanned (every check of that gate is local to a line)."""
    plugins, keyword, keyword_gate = _detectors()
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        if not might_hold_secrets(line):
            continue
        for plugin, gate in plugins:
            if gate is None or gate.search(line):
                found += [(i, value, plugin.secret_type) for value in plugin.analyze_string(line)]
        if keyword_gate.search(line):
            found += [(i, value, keyword.secret_type) for value in keyword.analyze_string(line)]
    if not found:
        return []
    # several patterns of one plugin may report the same value on the same line
    return [(i, v, kind) for i, v, kind in dict.fromkeys(found) if v and not _is_false_positive(v, lines[i])]


# Each pattern below with the substrings (of the lower-cased text) one of which any match
# holds: a text without them is not searched.
_PATTERNS = ((_URL_CREDENTIALS, 1, "Connection String", ("://",)),
             (_PASSWORD_PAIR, 1, "Connection String", ("passw", "pwd")),
             (_PASSWORD_PARAM, 1, "Connection String", ("passw", "pwd")),
             (_BEARER, 1, "Bearer Token", ("bearer",)),
             (_CREDENTIAL_ASSIGNMENT, 2, "Credential Assignment",
              ("token", "credential", "access_key", "accesskey", "secret_key", "secretkey", "client_secret",
               "clientsecret", "auth_key", "authkey", "api_key", "apikey")))


def _folded(text: str) -> str:
    """`text` in lower case, with the two letters IGNORECASE also matches to ASCII ones ('ı'
    to i, 'ſ' to s), so that a pattern's literal is in it wherever the pattern could match."""
    low = text.lower()
    return low if low.isascii() else low.replace("ı", "i").replace("ſ", "s")


def _pattern_spans(text: str) -> list[tuple[int, int, str]]:
    spans = [(m.start(), m.end(), "Private Key") for m in _PRIVATE_KEY_BLOCK.finditer(text)]
    low = _folded(text)
    for pattern, group, kind, needs in _PATTERNS:
        if not any(word in low for word in needs):
            continue
        for m in pattern.finditer(text):
            value = m.group(group)
            if not _is_false_positive(value, ""):
                spans.append((m.start(group), m.end(group), kind))
    return spans


def _bounded(value: str) -> re.Pattern:
    """The value as a whole token; a value cut at a separator (detect-secrets' JWT pattern
    stops lazily after the second dot) is extended to the end of its token."""
    tail = r"[A-Za-z0-9_\-+/=.]*" if value[-1] in "._-" else r"(?![A-Za-z0-9])"
    return re.compile(r"(?<![A-Za-z0-9])" + re.escape(value) + tail)


# A text that passes none of these checks cannot hold anything the detectors below report:
# every vendor token is a long run of token characters mixing letters and digits (random
# strings almost always do; Cloudant API keys are 24 letters next to a key/pass name),
# and the rest need a keyword or a literal marker. Most examples pass none, and skip the
# ~20 detectors for a few µs of plain substring search.
_LONG_TOKEN = re.compile(r"[A-Za-z0-9_\-+/=.]{16,}")
# The same runs in ASCII text, found 3x faster: token characters translated to "a", the rest
# to " ", then a search for 16 a's, which the regex engine does as a fast substring scan.
_TOKEN_BYTES = bytes(ord("a") if chr(c).isascii() and (chr(c).isalnum() or chr(c) in "_-+/=.") else ord(" ")
                     for c in range(256))
_LONG_RUN = re.compile(b"a" * 16 + b"a*")
_MIXED = re.compile(r"[A-Za-z]\d|\d[A-Za-z]")
_MARKER_WORDS = ("://", "private key", "putty", "bearer", "passw", "pwd", "secret", "token", "credential",
                 "contrase")
# Names of keys and passwords: (api|auth|access|service|account|db|database|priv|private|client)_?key,
# key_?pass and (db|database)_?pass, found from each "key" and "pass" (C substring searches)
# rather than by a regex that tries its alternatives at every position of the text.
_KEY_OWNERS = tuple(owner + sep for owner in ("api", "auth", "access", "service", "account", "db", "database",
                                              "priv", "private", "client") for sep in ("", "_"))
_PASS_OWNERS = ("db", "db_", "database", "database_")


def _names_a_key(low: str) -> bool:
    at = low.find("key")
    while at >= 0:
        if low.endswith(_KEY_OWNERS, 0, at) or low.startswith(("pass", "_pass"), at + 3):
            return True
        at = low.find("key", at + 1)
    at = low.find("pass")
    while at >= 0:
        if low.endswith(_PASS_OWNERS, 0, at):
            return True
        at = low.find("pass", at + 1)
    return False


def _long_tokens(text: str) -> list[str]:
    """What `_LONG_TOKEN` finds in `text`."""
    if not text.isascii():
        return [m.group() for m in _LONG_TOKEN.finditer(text)]
    return [text[m.start():m.end()] for m in _LONG_RUN.finditer(text.encode().translate(_TOKEN_BYTES))]


def might_hold_secrets(text: str) -> bool:
    low = text.lower()
    for word in _MARKER_WORDS:
        if word in low:
            return True
    if _names_a_key(low):
        return True
    for token in _long_tokens(text):
        if len(_MIXED.findall(token)) >= 2 or (len(token) >= 24 and token.isalpha()
                                                and ("key" in low or "pw" in low or "pass" in low)):
            return True
    return False


def scrub_fields(fields: dict[str, str | None]) -> tuple[dict[str, str | None], list[Finding]]:
    """Scrub several texts of one example together: a secret found in one (the code) is
    also replaced where it recurs in the others (its tests), so they stay consistent."""
    if not might_hold_secrets("\n".join(text for text in fields.values() if text)):
        return dict(fields), []
    findings: list[Finding] = []
    spans: dict[str, list[tuple[int, int]]] = {}
    shared: set[str] = set()  # values long enough to replace wherever they occur
    for name, text in fields.items():
        if not text or not might_hold_secrets(text):  # the check is per text: this one holds none
            continue
        mine = spans.setdefault(name, [])
        for start, end, kind in _pattern_spans(text):
            mine.append((start, end))
            findings.append(Finding(kind, text.count("\n", 0, start) + 1))
        detected = find_secrets(text)
        if detected:
            offsets = [0]
            for line in text.splitlines(keepends=True):
                offsets.append(offsets[-1] + len(line))
            for i, value, kind in detected:
                findings.append(Finding(kind, i + 1))
                if len(value) >= 8:
                    shared.add(value)
                else:  # a short value is replaced only on its own line, never elsewhere
                    mine += [m.span() for m in _bounded(value).finditer(text, offsets[i], offsets[i + 1])]
    out: dict[str, str | None] = {}
    for name, text in fields.items():
        if not text:
            out[name] = text
            continue
        mine = spans.get(name, []) + [(m.start(), m.end()) for value in shared
                                      for m in _bounded(value).finditer(text)]
        out[name] = _replace(text, mine) if mine else text
    return out, findings


def _replace(text: str, spans: list[tuple[int, int]]) -> str:
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    pieces, last = [], 0
    for start, end in merged:
        pieces += [text[last:start], PLACEHOLDER]
        last = end
    result = "".join(pieces) + text[last:]
    if _parses(text) and not _parses(result):
        result = result.replace(PLACEHOLDER, IDENTIFIER_PLACEHOLDER)
    return result


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def scrub_text(text: str) -> tuple[str, list[Finding]]:
    """`text` with every secret replaced by `<SECRET>`, and what was found where."""
    out, findings = scrub_fields({"text": text})
    return out["text"] or "", findings


def scrub_candidates(candidates) -> Counter:
    """Scrub prompt, code, explanation and tests of every candidate in place; count by kind."""
    kinds: Counter = Counter()
    for c in candidates:
        out, findings = scrub_fields({"prompt": c.prompt, "code": c.code,
                                      "explanation": c.explanation, "tests": c.tests})
        if findings:
            c.prompt, c.code, c.explanation, c.tests = (out["prompt"], out["code"], out["explanation"],
                                                        out["tests"])
            kinds.update(f.kind for f in findings)
    return kinds

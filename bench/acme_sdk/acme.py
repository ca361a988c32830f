"""acme: Acme's in-house helper library.

One module, standard library only, deterministic. It implements the Acme
conventions (record ids, money, dates, log lines, error codes, API paths,
versions, invoices, durations and priorities) so that application code never
re-implements them by hand. Parsers raise ValueError on malformed input.
"""

import datetime
import re

__all__ = [
    # record ids
    "format_record_id", "parse_record_id", "is_record_id",
    # money
    "format_money", "parse_money",
    # dates
    "to_acme_date", "parse_acme_date", "shift_acme_date",
    # log lines
    "format_log_line", "parse_log_line", "log_level_rank",
    # error codes
    "error_code", "parse_error_code", "is_release_blocker",
    # API paths
    "api_path", "parse_api_path", "api_url",
    # versions
    "format_version", "parse_version", "next_version",
    # invoices
    "invoice_number", "parse_invoice_number", "invoice_pdf_name",
    # durations
    "format_duration", "parse_duration",
    # priorities
    "priority_label", "priority_name", "is_urgent",
]


# ---------------------------------------------------------------- record ids

_RECORD_ID = re.compile(r"ACM-(\d{6})")


def format_record_id(n: int) -> str:
    """Return the record id of record number ``n``: 'ACM-' + n zero-padded to 6 digits.

    >>> format_record_id(42)
    'ACM-000042'
    """
    if n < 1:
        raise ValueError(f"record numbers start at 1, got {n}")
    return f"ACM-{n:06d}"


def parse_record_id(text: str) -> int:
    """Return the record number of a record id such as 'ACM-000042' (surrounding blanks allowed).

    Record ids are case-sensitive; anything else raises ValueError.
    """
    text = text.strip()
    if not is_record_id(text):
        raise ValueError(f"not a record id: {text!r}")
    return int(text[4:])


def is_record_id(text: str) -> bool:
    """True if ``text`` is exactly a well-formed record id ('ACM-' + 6 digits, number >= 1)."""
    match = _RECORD_ID.fullmatch(text)
    return bool(match) and int(match.group(1)) >= 1


# --------------------------------------------------------------------- money


def format_money(cents: int) -> str:
    """Format integer cents as euros: ',' thousands, '.', two decimals, ' EUR'; '-' when negative.

    >>> format_money(123450)
    '1,234.50 EUR'
    >>> format_money(-5)
    '-0.05 EUR'
    """
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{cents // 100:,}.{cents % 100:02d} EUR"


_MONEY = re.compile(r"(-?)(\d{1,3}(?:,\d{3})*)\.(\d{2}) EUR")


def parse_money(text: str) -> int:
    """Return the integer cents of an amount written like '1,234.50 EUR' or '-0.05 EUR'."""
    match = _MONEY.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not an amount: {text!r}")
    sign, euros, cents = match.groups()
    value = int(euros.replace(",", "")) * 100 + int(cents)
    return -value if sign else value


# --------------------------------------------------------------------- dates


def to_acme_date(year: int, month: int, day: int) -> str:
    """Return the date string 'YYYYMMDD' (8 digits, no separators) of a real calendar day.

    >>> to_acme_date(2024, 1, 31)
    '20240131'
    """
    return datetime.date(year, month, day).strftime("%Y%m%d")


def parse_acme_date(text: str) -> datetime.date:
    """Read a date string 'YYYYMMDD' into a ``datetime.date``; raise ValueError otherwise."""
    if len(text) != 8 or not text.isdigit():
        raise ValueError(f"not a date string: {text!r}")
    return datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))


def shift_acme_date(text: str, days: int) -> str:
    """Move a date string 'YYYYMMDD' by ``days`` days (negative goes back) and return a date string."""
    moved = parse_acme_date(text) + datetime.timedelta(days=days)
    return to_acme_date(moved.year, moved.month, moved.day)


# ----------------------------------------------------------------- log lines

_LEVELS = ("DEBUG", "INFO", "WARN", "ERROR")


def _normalize_level(level: str) -> str:
    level = level.strip().upper()
    if level == "WARNING":
        level = "WARN"
    if level not in _LEVELS:
        raise ValueError(f"unknown log level: {level!r}")
    return level


def format_log_line(level: str, component: str, message: str) -> str:
    """Build 'LEVEL|component|message'.

    The level may be given in any case and 'warning' becomes 'WARN'; the component
    is lower-cased; the message is kept as is (it may contain '|').

    >>> format_log_line('warning', 'Auth', 'token expires soon')
    'WARN|auth|token expires soon'
    """
    return f"{_normalize_level(level)}|{component.lower()}|{message}"


def parse_log_line(line: str) -> tuple[str, str, str]:
    """Split 'LEVEL|component|message' into (level, component, message); the message may contain '|'."""
    parts = line.split("|", 2)
    if len(parts) != 3:
        raise ValueError(f"not a log line: {line!r}")
    level, component, message = parts
    return level, component, message


def log_level_rank(level: str) -> int:
    """Severity rank of a log level: DEBUG 0, INFO 1, WARN 2, ERROR 3 (any case, 'warning' allowed)."""
    return _LEVELS.index(_normalize_level(level))


# --------------------------------------------------------------- error codes

_SEVERITY_LETTERS = {"critical": "C", "high": "H", "medium": "M", "low": "L"}
_LETTER_SEVERITIES = {letter: word for word, letter in _SEVERITY_LETTERS.items()}
_ERROR_CODE = re.compile(r"([CHML])-E(\d{4})")


def error_code(number: int, severity: str) -> str:
    """Return the error code for ``number`` at a severity word ('critical', 'high', 'medium', 'low').

    The code is the severity letter, '-E' and the number zero-padded to 4 digits.

    >>> error_code(42, 'high')
    'H-E0042'
    """
    return f"{_SEVERITY_LETTERS[severity.strip().lower()]}-E{number:04d}"


def parse_error_code(code: str) -> tuple[str, int]:
    """Split an error code such as 'H-E0042' into (severity word, number): ('high', 42)."""
    match = _ERROR_CODE.fullmatch(code.strip())
    if not match:
        raise ValueError(f"not an error code: {code!r}")
    return _LETTER_SEVERITIES[match.group(1)], int(match.group(2))


def is_release_blocker(code: str) -> bool:
    """True if an error code blocks a release (severity critical or high)."""
    return parse_error_code(code)[0] in ("critical", "high")


# ----------------------------------------------------------------- API paths

API_BASE_URL = "https://api.acme.example"


def api_path(resource: str, item_id: int | None = None) -> str:
    """Return the REST API path of a resource collection or, with ``item_id``, of one item.

    ``resource`` is the singular snake_case name; the path uses the plural in kebab-case.

    >>> api_path('line_item', 3)
    '/v2/line-items/3'
    >>> api_path('order')
    '/v2/orders'
    """
    path = f"/v2/{resource.replace('_', '-')}s"
    return path if item_id is None else f"{path}/{item_id}"


def parse_api_path(path: str) -> tuple[str, int | None]:
    """Turn '/v2/line-items/3' into ('line_item', 3) and '/v2/orders' into ('order', None)."""
    match = re.fullmatch(r"/v2/([a-z0-9]+(?:-[a-z0-9]+)*)s(?:/(\d+))?", path.strip())
    if not match:
        raise ValueError(f"not an API path: {path!r}")
    resource = match.group(1).replace("-", "_")
    return resource, None if match.group(2) is None else int(match.group(2))


def api_url(resource: str, item_id: int | None = None) -> str:
    """Return the full URL (base 'https://api.acme.example') of a collection or of one item."""
    return API_BASE_URL + api_path(resource, item_id)


# ------------------------------------------------------------------ versions


def format_version(year: int, month: int, patch: int) -> str:
    """Return the calendar version 'v' + year + '.' + two-digit month + '.' + patch.

    >>> format_version(2024, 3, 1)
    'v2024.03.1'
    """
    return f"v{year}.{month:02d}.{patch}"


def parse_version(text: str) -> tuple[int, int, int]:
    """Split a version such as 'v2024.03.1' into (year, month, patch); the tuple sorts correctly."""
    match = re.fullmatch(r"v(\d{4})\.(\d{2})\.(\d+)", text.strip())
    if not match:
        raise ValueError(f"not a version: {text!r}")
    year, month, patch = (int(g) for g in match.groups())
    return year, month, patch


def next_version(current: str, year: int, month: int) -> str:
    """Return the version of the next release made in ``year``/``month`` after ``current``.

    The patch continues within the same month and restarts at 0 in a new month.
    """
    cur_year, cur_month, patch = parse_version(current)
    if (cur_year, cur_month) == (year, month):
        return format_version(year, month, patch + 1)
    return format_version(year, month, 0)


# ------------------------------------------------------------------ invoices


def invoice_number(year: int, seq: int) -> str:
    """Return the invoice number of the ``seq``-th invoice of a year: 'INV/' + year + '/' + 5-digit seq.

    >>> invoice_number(2024, 42)
    'INV/2024/00042'
    """
    if seq < 1:
        raise ValueError(f"invoice sequence numbers start at 1, got {seq}")
    return f"INV/{year}/{seq:05d}"


def parse_invoice_number(text: str) -> tuple[int, int]:
    """Split an invoice number such as 'INV/2024/00042' into (year, seq); the tuple sorts correctly."""
    match = re.fullmatch(r"INV/(\d{4})/(\d{5})", text.strip())
    if not match:
        raise ValueError(f"not an invoice number: {text!r}")
    return int(match.group(1)), int(match.group(2))


def invoice_pdf_name(number: str) -> str:
    """Return the PDF file name of an invoice number: '/' becomes '-' and '.pdf' is appended."""
    parse_invoice_number(number)
    return number.strip().replace("/", "-") + ".pdf"


# ----------------------------------------------------------------- durations


def format_duration(minutes: int) -> str:
    """Show minutes as '<h>h<m>m', leaving out zero parts; '0m' for nothing; no days.

    >>> [format_duration(m) for m in (90, 120, 45, 0, 1505)]
    ['1h30m', '2h', '45m', '0m', '25h5m']
    """
    if minutes < 0:
        raise ValueError(f"negative duration: {minutes}")
    hours, mins = divmod(minutes, 60)
    if hours and mins:
        return f"{hours}h{mins}m"
    return f"{hours}h" if hours else f"{mins}m"


def parse_duration(text: str) -> int:
    """Return the minutes of a duration such as '1h30m', '2h' or '45m' (sloppy '90m', '2h0m' accepted)."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?", text.strip())
    if not match or not text.strip():
        raise ValueError(f"not a duration: {text!r}")
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


# ---------------------------------------------------------------- priorities

_PRIORITY_NAMES = ("critical", "high", "medium", "low", "trivial")


def priority_label(name: str) -> str:
    """Return the priority label of a priority name (any case): critical P0, high P1,
    medium P2, low P3, trivial P4."""
    key = name.strip().lower()
    if key not in _PRIORITY_NAMES:
        raise ValueError(f"unknown priority: {name!r}")
    return f"P{_PRIORITY_NAMES.index(key)}"


def priority_name(label: str) -> str:
    """Return the lower-case priority name of a label 'P0'..'P4'."""
    if not re.fullmatch(r"P[0-4]", label.strip()):
        raise ValueError(f"not a priority label: {label!r}")
    return _PRIORITY_NAMES[int(label.strip()[1])]


def is_urgent(label: str) -> bool:
    """True if a priority label is urgent (P0 or P1)."""
    return priority_name(label) in ("critical", "high")

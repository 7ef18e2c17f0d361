"""Which column names look like direct identifiers (one home for the detector).

A name check, not a content check: reading values to guess whether they
identify someone would mean scanning patient data for a warning. The list is
short on purpose: it flags the usual names of direct identifiers so that an
operator exposing them does so knowingly; it is no substitute for reviewing
the columns (a column named ``x7`` may still hold a record number).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Matched against the name's words (split at '_', '-', '.', spaces and
# camelCase), so that "sid" in "side" or "dob" in "adobe" does not match, but
# "patient_id", "PatientID", "mrn" and "date_of_birth" do.
_IDENTIFIER_WORDS: frozenset[str] = frozenset(
    {
        "id", "ids", "uuid", "guid", "patient", "patientid", "mrn", "ssn", "nhs", "nin", "npi",
        "name", "names", "firstname", "lastname", "surname", "fullname", "forename", "initials",
        "birth", "birthdate", "dob", "address", "street", "postcode", "zip", "zipcode",
        "phone", "telephone", "mobile", "email", "mail", "insurance", "passport", "licence", "license",
    }
)
_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")


def looks_like_identifier(name: str) -> bool:
    """True when a word of the column name is a usual name of a direct identifier."""
    words = [word.lower() for word in _SPLIT.split(name) if word]
    return any(word in _IDENTIFIER_WORDS for word in words) or name.lower() in _IDENTIFIER_WORDS


def identifier_like(names: Iterable[str]) -> tuple[str, ...]:
    """The names among ``names`` that look like direct identifiers, in their order."""
    return tuple(name for name in names if looks_like_identifier(name))

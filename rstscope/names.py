"""Display names of the rollup keys: countries from a table shipped in the package, ASes from the records.

Country names come from ``rstscope/data/countries.tsv`` (Debian iso-codes, see its header) so that every
producer of rollup rows spells them the same way without a database; AS names come from the ASN
database through the connection records (``as_name``), so they are only as good as that database.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Final

UNKNOWN_NAME: Final = "Unknown"
"""What the API and the dashboard show for country ``XX`` and AS 0 (no geolocation data)."""


@functools.cache
def country_names() -> dict[str, str]:
    """ISO 3166-1 alpha-2 code -> English short name (plus XK, Kosovo); read once from the package."""
    text = resources.files("rstscope").joinpath("data", "countries.tsv").read_text(encoding="utf-8")
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            code, _, name = line.partition("\t")
            out[code] = name
    return out


def country_name(code: str) -> str:
    """The country's English short name, ``""`` when the code is not a country (``XX``, unknown codes)."""
    return country_names().get(code.upper(), "")


def country_label(code: str) -> str:
    """A name to show: the country's name, ``Unknown`` for ``XX``, the code itself if the table lacks it."""
    if code.upper() == "XX":
        return UNKNOWN_NAME
    return country_name(code) or code.upper()


def as_label(asn: int | str, name: str) -> str:
    """A name to show for an AS: its organisation, ``Unknown`` for AS 0, else ``""`` (no name known)."""
    return UNKNOWN_NAME if int(asn) == 0 else name

"""Continents of countries, for Radar's `continent` parameter (derived from the rollups' country codes).

The table is the `Continent` column of GeoNames' countryInfo.txt (CC BY 4.0, https://www.geonames.org/):
every ISO 3166-1 alpha-2 code plus `XK` (Kosovo). Radar does not publish its own table; where
countries straddle continents GeoNames' choice holds (RU and CY in EU, TR, AM, AZ, GE and KZ in AS,
EG in AF, TL in OC). `XX` (unknown) and any code not listed belong to no continent.
"""

from __future__ import annotations

from collections.abc import Iterable

# Radar's continent codes and names.
CONTINENTS: dict[str, str] = {
    "AF": "Africa",
    "AN": "Antarctica",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}

_MEMBERS = {
    "AF": "AO BF BI BJ BW CD CF CG CI CM CV DJ DZ EG EH ER ET GA GH GM GN GQ GW KE KM LR LS LY MA MG ML MR MU MW "
          "MZ NA NE NG RE RW SC SD SH SL SN SO SS ST SZ TD TG TN TZ UG YT ZA ZM ZW",
    "AN": "AQ BV GS HM TF",
    "AS": "AE AF AM AZ BD BH BN BT CC CN GE HK ID IL IN IO IQ IR JO JP KG KH KP KR KW KZ LA LB LK MM MN MO MV MY "
          "NP OM PH PK PS QA SA SG SY TH TJ TM TR TW UZ VN YE",
    "EU": "AD AL AT AX BA BE BG BY CH CY CZ DE DK EE ES FI FO FR GB GG GI GR HR HU IE IM IS IT JE LI LT LU LV MC "
          "MD ME MK MT NL NO PL PT RO RS RU SE SI SJ SK SM UA VA XK",
    "NA": "AG AI AW BB BL BM BQ BS BZ CA CR CU CW DM DO GD GL GP GT HN HT JM KN KY LC MF MQ MS MX NI PA PM PR SV "
          "SX TC TT US VC VG VI",
    "OC": "AS AU CK CX FJ FM GU KI MH MP NC NF NR NU NZ PF PG PN PW SB TK TL TO TV UM VU WF WS",
    "SA": "AR BO BR CL CO EC FK GF GY PE PY SR UY VE",
}

COUNTRY_CONTINENT: dict[str, str] = {cc: cont for cont, members in _MEMBERS.items() for cc in members.split()}
_BY_CONTINENT: dict[str, frozenset[str]] = {cont: frozenset(m.split()) for cont, m in _MEMBERS.items()}


def continent_of(country: str) -> str:
    """The continent code of an ISO country code, or "" (unknown: `XX`, or a code not in the table)."""
    return COUNTRY_CONTINENT.get(country, "")


def countries_in(continents: Iterable[str]) -> frozenset[str]:
    """Every country code of the given continents."""
    out: set[str] = set()
    for c in continents:
        out |= _BY_CONTINENT.get(c, frozenset())
    return frozenset(out)

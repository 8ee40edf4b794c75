"""Country and ASN of an address, from MaxMind-format (.mmdb) databases on disk.

rstscope rolls anomalous connections up per country and per ASN.  The data comes
from free databases that the operator fetches once (``rstscope geo fetch``) into a
cache directory; at run time :class:`GeoDB` only reads local files, so capture
and analysis never touch the network.

The package has three parts, so that what runs on the capture and analysis path
(the lookup) carries nothing of the rest:

* :mod:`rstscope.geo.lookup`: :class:`GeoDB`, :class:`GeoInfo`, :data:`UNKNOWN`
  (pure reading; used by the edge, the workers and ``analyze``);
* :mod:`rstscope.geo.download`: :func:`fetch` (npm packages or DB-IP lite files);
* :mod:`rstscope.geo.cli`: ``rstscope geo fetch|lookup`` (also ``python -m rstscope.geo``).

Layouts read (the record shape is detected, not configured):

* country, nested: ``{'country': {'iso_code': 'US'}, 'registered_country': ...}``
  (GeoLite2-Country/City, DB-IP country/city lite);
* country, flat: ``{'country_code': 'US'}`` (the ip-location-db ``*-country-mmdb``
  and ``*-city-mmdb`` packages);
* ASN: ``{'autonomous_system_number': 15169, 'autonomous_system_organization': 'Google LLC'}``
  (GeoLite2-ASN, DB-IP asn lite, ip-location-db ``asn-mmdb``);
* ASN as ip-location-db numeric CSV (``asn-ipv4-num.csv``/``asn-ipv6-num.csv``:
  ``start,end,asn,organization``), because the ASN database is published to the
  npm registry only in that form.

Unknown is spelled ``country="XX"`` and ``asn=0`` (see :data:`UNKNOWN`).
"""

from __future__ import annotations

from rstscope.geo.cli import main
from rstscope.geo.download import DEFAULT_NPM_PACKAGES, DEFAULT_SOURCE, fetch
from rstscope.geo.lookup import UNKNOWN, UNKNOWN_ASN, UNKNOWN_COUNTRY, GeoDB, GeoError, GeoInfo, default_geo_dir

__all__ = [
    "DEFAULT_NPM_PACKAGES",
    "DEFAULT_SOURCE",
    "UNKNOWN",
    "UNKNOWN_ASN",
    "UNKNOWN_COUNTRY",
    "GeoDB",
    "GeoError",
    "GeoInfo",
    "default_geo_dir",
    "fetch",
    "main",
]

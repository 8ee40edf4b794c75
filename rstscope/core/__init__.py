"""The pure core: connection reconstruction, classification and rollup. No I/O anywhere below here."""

"""Analysis plans: the signed, declarative requests for statistics (format, release layout)."""

"""`make demo`: a real agent process on the embedded defaults, queried over mTLS."""

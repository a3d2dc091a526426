"""Products: keyset-paginated listing, cache-aside reads, writes that invalidate."""

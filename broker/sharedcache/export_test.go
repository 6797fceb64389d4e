package sharedcache

// Open decrypts v as the value of key, for the tests.
func Open(c *Cache, key string, v []byte) ([]byte, error) { return c.seal.open(key, v) }

// Names returns the Redis names of key's value and lock, for the tests.
func Names(c *Cache, key string) (data, lock string) { return c.names(key) }

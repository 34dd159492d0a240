package pgguard

// ClaimRetries returns how many times s re-ran its claim statement because
// the key's row changed after the statement's snapshot.
func ClaimRetries(s *Store) int64 { return s.claimRetries.Load() }

// Render exposes the migration renderer to tests.
func Render(sql string, cfg *Config) (string, error) {
	n, err := cfg.resolve()
	if err != nil {
		return "", err
	}
	return render(sql, n)
}
